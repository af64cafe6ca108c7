/// Writes replies into caller-provided memory, so the server's per-request path allocates
/// nothing: each function stores at the buffer's start and returns how many bytes it wrote. The
/// buffer must be at least the size named by the matching `...Bytes` constant or function.
public enum NBDReplyEncoder {
    public static let simpleReplyBytes = 16
    public static let chunkHeaderBytes = 20
    /// Chunk header plus the offset; the read data follows.
    public static let offsetDataHeaderBytes = chunkHeaderBytes + 8
    public static let offsetHoleBytes = chunkHeaderBytes + 12
    /// Chunk header plus the context ID; descriptors follow, 8 bytes each.
    public static let blockStatusHeaderBytes = chunkHeaderBytes + 4
    public static let blockDescriptorBytes = 8
    public static let noneBytes = chunkHeaderBytes
    /// Error messages are protocol strings: at most 4096 bytes.
    public static let maxMessageBytes = 4096

    public static func errorChunkBytes(messageBytes: Int, withOffset: Bool) -> Int {
        chunkHeaderBytes + 6 + min(messageBytes, maxMessageBytes) + (withOffset ? 8 : 0)
    }

    /// A simple reply; for a successful READ without structured replies the data follows it.
    @discardableResult
    public static func simpleReply(cookie: UInt64, error: NBDErrno?, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= simpleReplyBytes)
        NBDWire.store32(NBDMagic.simpleReply, buffer, at: 0)
        NBDWire.store32(error?.rawValue ?? 0, buffer, at: 4)
        NBDWire.store64(cookie, buffer, at: 8)
        return simpleReplyBytes
    }

    /// The 20-byte header every structured chunk starts with.
    @discardableResult
    public static func chunkHeader(
        cookie: UInt64, type: UInt16, done: Bool, payloadLength: UInt32, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(buffer.count >= chunkHeaderBytes)
        NBDWire.store32(NBDMagic.structuredReply, buffer, at: 0)
        NBDWire.store16(done ? NBDReplyFlags.done : 0, buffer, at: 4)
        NBDWire.store16(type, buffer, at: 6)
        NBDWire.store64(cookie, buffer, at: 8)
        NBDWire.store32(payloadLength, buffer, at: 16)
        return chunkHeaderBytes
    }

    /// An OFFSET_DATA chunk's header and offset; `dataLength` bytes of data must follow.
    @discardableResult
    public static func offsetDataHeader(
        cookie: UInt64, offset: UInt64, dataLength: UInt32, done: Bool, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(buffer.count >= offsetDataHeaderBytes && dataLength > 0 && dataLength <= UInt32.max - 8)
        chunkHeader(cookie: cookie, type: NBDReplyChunkType.offsetData, done: done, payloadLength: 8 + dataLength, into: buffer)
        NBDWire.store64(offset, buffer, at: chunkHeaderBytes)
        return offsetDataHeaderBytes
    }

    /// An OFFSET_HOLE chunk: `holeLength` bytes from `offset` read as zeros.
    @discardableResult
    public static func offsetHole(
        cookie: UInt64, offset: UInt64, holeLength: UInt32, done: Bool, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(buffer.count >= offsetHoleBytes && holeLength > 0)
        chunkHeader(cookie: cookie, type: NBDReplyChunkType.offsetHole, done: done, payloadLength: 12, into: buffer)
        NBDWire.store64(offset, buffer, at: chunkHeaderBytes)
        NBDWire.store32(holeLength, buffer, at: chunkHeaderBytes + 8)
        return offsetHoleBytes
    }

    /// A BLOCK_STATUS chunk's header and context ID; `descriptorCount` descriptors must follow.
    @discardableResult
    public static func blockStatusHeader(
        cookie: UInt64, contextID: UInt32, descriptorCount: Int, done: Bool, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(buffer.count >= blockStatusHeaderBytes && descriptorCount > 0 && descriptorCount <= (Int(UInt32.max) - 4) / 8)
        chunkHeader(
            cookie: cookie, type: NBDReplyChunkType.blockStatus, done: done,
            payloadLength: UInt32(4 + descriptorCount * blockDescriptorBytes), into: buffer)
        NBDWire.store32(contextID, buffer, at: chunkHeaderBytes)
        return blockStatusHeaderBytes
    }

    /// One block status descriptor at `offset` in `buffer`.
    @discardableResult
    public static func blockDescriptor(_ descriptor: NBDBlockDescriptor, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        precondition(offset >= 0 && buffer.count - offset >= blockDescriptorBytes && descriptor.length > 0)
        NBDWire.store32(descriptor.length, buffer, at: offset)
        NBDWire.store32(descriptor.flags, buffer, at: offset + 4)
        return blockDescriptorBytes
    }

    /// A whole BLOCK_STATUS chunk: header, context ID and every descriptor.
    @discardableResult
    public static func blockStatus(
        cookie: UInt64, contextID: UInt32, descriptors: UnsafeBufferPointer<NBDBlockDescriptor>, done: Bool,
        into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(buffer.count >= blockStatusHeaderBytes + descriptors.count * blockDescriptorBytes)
        var written = blockStatusHeader(cookie: cookie, contextID: contextID, descriptorCount: descriptors.count, done: done, into: buffer)
        for descriptor in descriptors { written += blockDescriptor(descriptor, into: buffer, at: written) }
        return written
    }

    /// An ERROR chunk, or ERROR_OFFSET when `offset` is given; the message is cut at 4096 bytes.
    @discardableResult
    public static func errorChunk(
        cookie: UInt64, error: NBDErrno, message: String, offset: UInt64? = nil, done: Bool,
        into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        let messageBytes = min(message.utf8.count, maxMessageBytes)
        let total = errorChunkBytes(messageBytes: messageBytes, withOffset: offset != nil)
        precondition(buffer.count >= total)
        let type = offset == nil ? NBDReplyChunkType.error : NBDReplyChunkType.errorOffset
        chunkHeader(cookie: cookie, type: type, done: done, payloadLength: UInt32(total - chunkHeaderBytes), into: buffer)
        NBDWire.store32(error.rawValue, buffer, at: chunkHeaderBytes)
        NBDWire.store16(UInt16(messageBytes), buffer, at: chunkHeaderBytes + 4)
        var position = chunkHeaderBytes + 6
        for byte in message.utf8.prefix(messageBytes) {
            buffer[position] = byte
            position += 1
        }
        if let offset { NBDWire.store64(offset, buffer, at: position) }
        return total
    }

    /// The NONE chunk that ends a structured reply whose other chunks were not marked DONE.
    @discardableResult
    public static func none(cookie: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        chunkHeader(cookie: cookie, type: NBDReplyChunkType.none, done: true, payloadLength: 0, into: buffer)
    }
}
