/// Structured reply chunk types; error types have bit 15 set.
public enum NBDReplyChunkType {
    public static let none: UInt16 = 0
    public static let offsetData: UInt16 = 1
    public static let offsetHole: UInt16 = 2
    public static let blockStatus: UInt16 = 5
    public static let errorBit: UInt16 = 1 << 15
    public static let error: UInt16 = errorBit | 1
    public static let errorOffset: UInt16 = errorBit | 2

    public static func isError(_ type: UInt16) -> Bool { type & errorBit != 0 }
}

/// Structured reply chunk flags.
public enum NBDReplyFlags {
    /// The chunk is the last of its reply.
    public static let done: UInt16 = 1 << 0
}
