/// Parses the server's side of the transmission phase for a client: simple replies and
/// structured chunks, checked against the requests in flight. Anything a correct server cannot
/// send (wrong magic, an unknown cookie, a chunk outside its request, a malformed payload) throws,
/// naming the fault; the client must then hang up.
public struct NBDReplyParser: Sendable {
    /// Largest chunk payload buffered whole: a BLOCK_STATUS chunk of the spec's 2^20 extents.
    public static let maxBufferedChunkBytes = 4 + 8 * (1 << 20)

    private struct InFlight: Sendable {
        var command: NBDCommand
        var offset: UInt64
        var length: UInt32
        var error: NBDErrno?
    }

    private enum Phase: Sendable {
        case magic
        case simpleHeader
        case chunkHeader
        case readData(cookie: UInt64, offset: UInt64, remaining: Int, then: Completion)
        case dataOffset(cookie: UInt64, dataLength: Int, done: Bool)
        case chunkPayload(cookie: UInt64, type: UInt16, done: Bool, length: Int)
    }

    private enum Completion: Sendable {
        case simple(error: NBDErrno?)
        case chunk(done: Bool)
    }

    private let structuredReplies: Bool
    private let contextIDs: Set<UInt32>
    private var inFlight: [UInt64: InFlight] = [:]
    private var phase = Phase.magic
    private var pending: [UInt8] = []

    /// `contextIDs` are the meta context IDs the handshake selected.
    public init(structuredReplies: Bool, contextIDs: Set<UInt32> = []) {
        self.structuredReplies = structuredReplies
        self.contextIDs = contextIDs
    }

    /// Registers a sent request so its reply can be checked; its cookie must be unique in flight.
    public mutating func expect(_ request: NBDRequest) throws(NBDProtocolError) {
        guard let command = request.command, command != .disconnect else {
            throw NBDProtocolError("request type \(request.type) gets no reply")
        }
        guard inFlight[request.cookie] == nil else { throw NBDProtocolError("cookie \(request.cookie) is already in flight") }
        inFlight[request.cookie] = InFlight(command: command, offset: request.offset, length: request.length)
    }

    public var requestsInFlight: Int { inFlight.count }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws(NBDProtocolError) -> [NBDReplyEvent] {
        var events: [NBDReplyEvent] = []
        var index = 0
        while index < bytes.count {
            if case .readData(let cookie, let offset, let remaining, let then) = phase {
                let take = min(remaining, bytes.count - index)
                events.append(.data(cookie: cookie, offset: offset, bytes: Array(bytes[index..<index + take])))
                index += take
                if take < remaining {
                    phase = .readData(cookie: cookie, offset: offset + UInt64(take), remaining: remaining - take, then: then)
                } else {
                    phase = .magic
                    finish(cookie: cookie, then, &events)
                }
                continue
            }
            let need = bytesNeeded
            let take = min(need - pending.count, bytes.count - index)
            pending.append(contentsOf: bytes[index..<index + take])
            index += take
            if pending.count == need { try complete(&events) }
        }
        // A chunk without payload (NONE) is whole once its header is.
        if case .chunkPayload(_, _, _, 0) = phase { try complete(&events) }
        return events
    }

    public mutating func feed(_ bytes: [UInt8]) throws(NBDProtocolError) -> [NBDReplyEvent] {
        // withUnsafeBytes rethrows untyped errors, so the typed one travels in a Result.
        let result = bytes.withUnsafeBytes { buffer in Result { () throws(NBDProtocolError) in try feed(buffer) } }
        return try result.get()
    }

    private var bytesNeeded: Int {
        switch phase {
        case .magic: return 4
        case .simpleHeader: return 16
        case .chunkHeader: return 20
        case .dataOffset: return 8
        case .chunkPayload(_, _, _, let length): return length
        case .readData: return 0
        }
    }

    private mutating func complete(_ events: inout [NBDReplyEvent]) throws(NBDProtocolError) {
        let message = pending
        var reader = NBDByteReader(message)
        switch phase {
        case .magic:
            let magic = reader.get32() ?? 0
            switch magic {
            case NBDMagic.simpleReply: phase = .simpleHeader
            case NBDMagic.structuredReply:
                guard structuredReplies else { throw NBDProtocolError("NBD server sent a structured reply that was not negotiated") }
                phase = .chunkHeader
            default: throw NBDProtocolError("NBD server sent reply magic 0x\(String(magic, radix: 16))")
            }
            return  // keep the magic: the header lengths include it
        case .simpleHeader:
            pending.removeAll(keepingCapacity: true)
            _ = reader.get32()
            let error = reader.get32() ?? 0
            let cookie = reader.get64() ?? 0
            let request = try lookUp(cookie)
            let failure: NBDErrno? = error == 0 ? nil : NBDErrno(wire: error)
            if request.command == .read && structuredReplies {
                throw NBDProtocolError("NBD server sent a simple reply to read \(cookie) after structured replies were negotiated")
            }
            if request.command == .read && failure == nil && request.length > 0 {
                phase = .readData(cookie: cookie, offset: request.offset, remaining: Int(request.length), then: .simple(error: nil))
            } else {
                phase = .magic
                finish(cookie: cookie, .simple(error: failure), &events)
            }
        case .chunkHeader:
            pending.removeAll(keepingCapacity: true)
            _ = reader.get32()
            let flags = reader.get16() ?? 0
            let type = reader.get16() ?? 0
            let cookie = reader.get64() ?? 0
            let length = Int(reader.get32() ?? 0)
            let request = try lookUp(cookie)
            let done = flags & NBDReplyFlags.done != 0
            try checkChunk(type: type, length: length, done: done, request: request, cookie: cookie)
            if type == NBDReplyChunkType.offsetData {
                phase = .dataOffset(cookie: cookie, dataLength: length - 8, done: done)
            } else {
                phase = .chunkPayload(cookie: cookie, type: type, done: done, length: length)
            }
        case .dataOffset(let cookie, let dataLength, let done):
            pending.removeAll(keepingCapacity: true)
            let offset = reader.get64() ?? 0
            try checkRange(cookie: cookie, offset: offset, length: UInt64(dataLength), what: "data")
            phase = .readData(cookie: cookie, offset: offset, remaining: dataLength, then: .chunk(done: done))
        case .chunkPayload(let cookie, let type, let done, _):
            pending.removeAll(keepingCapacity: true)
            phase = .magic
            try chunkPayload(cookie: cookie, type: type, &reader, &events)
            finish(cookie: cookie, .chunk(done: done), &events)
        case .readData:
            break
        }
    }

    private func lookUp(_ cookie: UInt64) throws(NBDProtocolError) -> InFlight {
        guard let request = inFlight[cookie] else { throw NBDProtocolError("NBD server replied to unknown cookie \(cookie)") }
        return request
    }

    private func checkChunk(type: UInt16, length: Int, done: Bool, request: InFlight, cookie: UInt64) throws(NBDProtocolError) {
        func bad(_ what: String) -> NBDProtocolError { NBDProtocolError("NBD server sent \(what) (cookie \(cookie))") }
        switch type {
        case NBDReplyChunkType.none:
            guard length == 0, done else { throw bad("a NONE chunk with \(length) bytes\(done ? "" : " and no DONE flag")") }
        case NBDReplyChunkType.offsetData:
            guard request.command == .read else { throw bad("read data for a \(request.command) request") }
            guard length > 8 else { throw bad("an OFFSET_DATA chunk of \(length) bytes") }
        case NBDReplyChunkType.offsetHole:
            guard request.command == .read else { throw bad("a hole for a \(request.command) request") }
            guard length == 12 else { throw bad("an OFFSET_HOLE chunk of \(length) bytes") }
        case NBDReplyChunkType.blockStatus:
            guard request.command == .blockStatus else { throw bad("block status for a \(request.command) request") }
            guard length >= 12, (length - 4) % 8 == 0, length <= Self.maxBufferedChunkBytes else {
                throw bad("a BLOCK_STATUS chunk of \(length) bytes")
            }
        case _ where NBDReplyChunkType.isError(type):
            guard length >= 6, length <= 6 + NBDReplyEncoder.maxMessageBytes + 8 + 64 else { throw bad("an error chunk of \(length) bytes") }
        default:
            throw bad("unknown chunk type \(type)")
        }
    }

    private func checkRange(cookie: UInt64, offset: UInt64, length: UInt64, what: String) throws(NBDProtocolError) {
        guard let request = inFlight[cookie] else { throw NBDProtocolError("NBD server replied to unknown cookie \(cookie)") }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, offset >= request.offset, end <= request.offset + UInt64(request.length) else {
            throw NBDProtocolError(
                "NBD server sent \(what) at \(offset)+\(length), outside request \(request.offset)+\(request.length) (cookie \(cookie))")
        }
    }

    private mutating func chunkPayload(
        cookie: UInt64, type: UInt16, _ reader: inout NBDByteReader, _ events: inout [NBDReplyEvent]
    ) throws(NBDProtocolError) {
        switch type {
        case NBDReplyChunkType.offsetHole:
            let offset = reader.get64() ?? 0
            let length = reader.get32() ?? 0
            guard length > 0 else { throw NBDProtocolError("NBD server sent an empty hole (cookie \(cookie))") }
            try checkRange(cookie: cookie, offset: offset, length: UInt64(length), what: "a hole")
            events.append(.hole(cookie: cookie, offset: offset, length: length))
        case NBDReplyChunkType.blockStatus:
            let contextID = reader.get32() ?? 0
            guard contextIDs.contains(contextID) else {
                throw NBDProtocolError("NBD server sent block status for unnegotiated context \(contextID) (cookie \(cookie))")
            }
            var descriptors: [NBDBlockDescriptor] = []
            descriptors.reserveCapacity(reader.remaining / 8)
            while let length = reader.get32(), let flags = reader.get32() {
                guard length > 0 else { throw NBDProtocolError("NBD server sent a zero-length extent (cookie \(cookie))") }
                descriptors.append(NBDBlockDescriptor(length: length, flags: flags))
            }
            events.append(.blockStatus(cookie: cookie, contextID: contextID, descriptors: descriptors))
        case NBDReplyChunkType.none:
            break
        default:
            // Error chunks, known or not: the spec has unknown error types end the reply in error.
            let wire = reader.get32() ?? 0
            let messageLength = Int(reader.get16() ?? 0)
            guard wire != 0, messageLength <= reader.remaining, let text = reader.getBytes(messageLength) else {
                throw NBDProtocolError("NBD server sent a malformed error chunk (cookie \(cookie))")
            }
            var offset: UInt64?
            if type == NBDReplyChunkType.errorOffset {
                guard reader.remaining == 8, let at = reader.get64() else {
                    throw NBDProtocolError("NBD server sent a malformed ERROR_OFFSET chunk (cookie \(cookie))")
                }
                try checkRange(cookie: cookie, offset: at, length: 0, what: "an error offset")
                offset = at
            }
            let error = NBDErrno(wire: wire)
            if inFlight[cookie]?.error == nil { inFlight[cookie]?.error = error }
            events.append(.error(cookie: cookie, error: error, message: String(decoding: text, as: UTF8.self), offset: offset))
        }
    }

    private mutating func finish(cookie: UInt64, _ completion: Completion, _ events: inout [NBDReplyEvent]) {
        switch completion {
        case .simple(let error):
            inFlight[cookie] = nil
            events.append(.completed(cookie: cookie, error: error))
        case .chunk(let done):
            guard done, let request = inFlight.removeValue(forKey: cookie) else { return }
            events.append(.completed(cookie: cookie, error: request.error))
        }
    }
}
