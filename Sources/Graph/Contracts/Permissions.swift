/// What a user of a node may do with it and what it lets others do, with QEMU's meaning
/// (BLK_PERM_*). The raw bits equal QEMU's, which the file driver's OFD lock bytes rely on.
public struct Permissions: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Reads return consistent data (nobody changes it under the reader in ways it cannot see).
    public static let consistentRead = Permissions(rawValue: 1 << 0)
    /// Writes that change the guest-visible data.
    public static let write = Permissions(rawValue: 1 << 1)
    /// Writes that leave guest-visible data unchanged (copy-on-read, streaming).
    public static let writeUnchanged = Permissions(rawValue: 1 << 2)
    /// Changing the node's size.
    public static let resize = Permissions(rawValue: 1 << 3)

    public static let all: Permissions = [.consistentRead, .write, .writeUnchanged, .resize]
    public static let names: [(Permissions, String)] = [
        (.consistentRead, "consistent read"), (.write, "write"), (.writeUnchanged, "write unchanged"), (.resize, "resize"),
    ]

    public var description: String {
        let parts = Self.names.filter { contains($0.0) }.map(\.1)
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }
}
