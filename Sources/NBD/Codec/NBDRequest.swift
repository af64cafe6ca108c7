/// One transmission-phase request header (28 bytes); a WRITE's data follows it on the wire.
public struct NBDRequest: Sendable, Hashable {
    public static let headerBytes = 28

    public var flags: NBDCommandFlags
    /// The raw type, kept even when unknown so the server can answer it with EINVAL.
    public var type: UInt16
    /// Opaque to the server, echoed in the reply (called "handle" in older texts).
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(command: NBDCommand, flags: NBDCommandFlags = [], cookie: UInt64, offset: UInt64, length: UInt32) {
        self.init(type: command.rawValue, flags: flags, cookie: cookie, offset: offset, length: length)
    }

    public init(type: UInt16, flags: NBDCommandFlags, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.type = type
        self.flags = flags
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public var command: NBDCommand? { NBDCommand(rawValue: type) }

    /// Bytes of data that follow the header: only a WRITE carries any.
    public var payloadBytes: Int { type == NBDCommand.write.rawValue ? Int(length) : 0 }

    /// Parses the first 28 bytes of `header`; a wrong magic means the stream is out of step.
    public static func parse(_ header: UnsafeRawBufferPointer) throws(NBDProtocolError) -> NBDRequest {
        guard header.count >= headerBytes else {
            throw NBDProtocolError("NBD request header needs \(headerBytes) bytes, got \(header.count)")
        }
        let magic = NBDWire.load32(header, at: 0)
        guard magic == NBDMagic.request else {
            throw NBDProtocolError("NBD client sent request magic 0x\(String(magic, radix: 16)), expected 0x25609513")
        }
        return NBDRequest(
            type: NBDWire.load16(header, at: 6), flags: NBDCommandFlags(rawValue: NBDWire.load16(header, at: 4)),
            cookie: NBDWire.load64(header, at: 8), offset: NBDWire.load64(header, at: 16), length: NBDWire.load32(header, at: 24))
    }

    /// Writes the 28-byte header at the start of `buffer` (the client side); returns 28.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= Self.headerBytes, "NBD request header needs 28 bytes")
        NBDWire.store32(NBDMagic.request, buffer, at: 0)
        NBDWire.store16(flags.rawValue, buffer, at: 4)
        NBDWire.store16(type, buffer, at: 6)
        NBDWire.store64(cookie, buffer, at: 8)
        NBDWire.store64(offset, buffer, at: 16)
        NBDWire.store32(length, buffer, at: 24)
        return Self.headerBytes
    }
}
