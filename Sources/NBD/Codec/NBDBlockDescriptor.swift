/// One extent of an NBD_REPLY_TYPE_BLOCK_STATUS chunk: a length and the context's flags for it.
public struct NBDBlockDescriptor: Sendable, Hashable {
    public var length: UInt32
    public var flags: UInt32
    public init(length: UInt32, flags: UInt32) {
        self.length = length
        self.flags = flags
    }
}
