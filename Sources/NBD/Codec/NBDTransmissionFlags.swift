/// The 16-bit per-export flags sent with the export's size (NBD_INFO_EXPORT or NBD_OPT_EXPORT_NAME).
public struct NBDTransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
    public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
    public static let sendResize = NBDTransmissionFlags(rawValue: 1 << 9)
    public static let sendCache = NBDTransmissionFlags(rawValue: 1 << 10)
    public static let sendFastZero = NBDTransmissionFlags(rawValue: 1 << 11)

    /// The flags that only make sense on a writable export.
    public static let writeCommands: NBDTransmissionFlags = [.sendTrim, .sendWriteZeroes, .sendFastZero, .sendResize]
}
