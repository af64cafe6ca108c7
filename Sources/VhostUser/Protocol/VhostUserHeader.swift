/// The 12-byte header in front of every message: request code, flags, payload size.
public struct VhostUserHeader: Equatable, Sendable {
    public static let byteCount = 12
    /// The largest payload either side sends (a full memory table, a config space, ...). A bigger
    /// size is a broken or hostile peer: the stream cannot be trusted past it.
    public static let maxPayloadBytes = 4096
    /// Version 1 in bits 0-1 of the flags; any other version is refused.
    public static let version: UInt32 = 0x1
    static let versionMask: UInt32 = 0x3
    public static let replyFlag: UInt32 = 1 << 2
    public static let needReplyFlag: UInt32 = 1 << 3

    public var request: VhostUserRequest
    public var flags: UInt32
    public var size: UInt32

    public init(request: VhostUserRequest, flags: UInt32 = VhostUserHeader.version, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    public var isReply: Bool { flags & Self.replyFlag != 0 }
    public var needsReply: Bool { flags & Self.needReplyFlag != 0 }

    /// Parses and checks a header: version 1, a payload no larger than `maxPayloadBytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(VhostUserProtocolError) -> VhostUserHeader {
        guard bytes.count >= byteCount else {
            throw VhostUserProtocolError("vhost-user header needs \(byteCount) bytes, got \(bytes.count)")
        }
        let header = VhostUserHeader(request: VhostUserRequest(rawValue: VhostUserWire.load32(bytes, at: 0)),
                                     flags: VhostUserWire.load32(bytes, at: 4), size: VhostUserWire.load32(bytes, at: 8))
        guard header.flags & versionMask == version else {
            throw VhostUserProtocolError("\(header.request): protocol version \(header.flags & versionMask), expected 1")
        }
        guard header.size <= UInt32(maxPayloadBytes) else {
            throw VhostUserProtocolError("\(header.request): payload of \(header.size) bytes is more than \(maxPayloadBytes)")
        }
        return header
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.byteCount, "a vhost-user header needs 12 bytes")
        VhostUserWire.store32(request.rawValue, bytes, at: 0)
        VhostUserWire.store32(flags, bytes, at: 4)
        VhostUserWire.store32(size, bytes, at: 8)
    }
}
