/// The 16-bit flags a server sends in its greeting.
public struct NBDHandshakeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let fixedNewstyle = NBDHandshakeFlags(rawValue: 1 << 0)
    public static let noZeroes = NBDHandshakeFlags(rawValue: 1 << 1)
}

/// The 32-bit flags a client answers the greeting with; a server must close on bits it does not know.
public struct NBDClientFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let fixedNewstyle = NBDClientFlags(rawValue: 1 << 0)
    public static let noZeroes = NBDClientFlags(rawValue: 1 << 1)
    public static let known: NBDClientFlags = [.fixedNewstyle, .noZeroes]
}
