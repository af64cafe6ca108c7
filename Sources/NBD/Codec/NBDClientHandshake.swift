/// The client side of fixed-newstyle negotiation as a value, driven like the server machine: feed
/// received bytes, send `takeOutbound()`, and look at `state`. It negotiates NO_ZEROES and
/// structured replies, selects meta contexts, then GO with NBD_INFO_BLOCK_SIZE, falling back to
/// EXPORT_NAME when the server does not know GO. The list and info modes ask their question and
/// then send NBD_OPT_ABORT.
public struct NBDClientHandshake: Sendable {
    public enum Mode: Sendable, Hashable {
        /// Open the export for transmission.
        case go
        /// NBD_OPT_INFO on the export, then abort.
        case info
        /// NBD_OPT_LIST, then abort.
        case list
        /// NBD_OPT_LIST_META_CONTEXT on the export with these queries (none: all), then abort.
        case listMetaContexts([String])
    }

    public enum State: Sendable, Hashable {
        case negotiating
        /// Transmission phase reached (`.go`).
        case connected(NBDClientNegotiation)
        /// The question was answered and NBD_OPT_ABORT sent (other modes): close after sending.
        case finished(NBDClientNegotiation)
        case failed(NBDProtocolError)
    }

    /// Largest option reply accepted: two 4096-byte strings and their fields fit easily.
    public static let maxReplyBytes = 16 * 1024

    private enum Phase: Sendable {
        case greeting
        case replyHeader(option: UInt32)
        case replyData(option: UInt32, type: UInt32, length: Int)
        case exportNameReply(length: Int)
        case done
    }

    private let exportName: String
    private let mode: Mode
    private let wantStructuredReplies: Bool
    private let metaContextQueries: [String]
    public private(set) var state = State.negotiating
    private var phase = Phase.greeting
    private var pending: [UInt8] = []
    private var outbound: [UInt8] = []
    private var result = NBDClientNegotiation()
    private var serverNoZeroes = false

    /// `metaContextQueries` are sent with NBD_OPT_SET_META_CONTEXT in `.go` mode when structured
    /// replies were negotiated; an empty list skips the option.
    public init(exportName: String, mode: Mode = .go, structuredReplies: Bool = true, metaContextQueries: [String] = ["base:allocation"]) {
        self.exportName = exportName
        self.mode = mode
        self.wantStructuredReplies = structuredReplies
        self.metaContextQueries = metaContextQueries
    }

    public mutating func takeOutbound() -> [UInt8] {
        defer { outbound.removeAll(keepingCapacity: true) }
        return outbound
    }

    /// Feeds received bytes; returns how many were used. Bytes after the handshake's end are left.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Int {
        var index = 0
        while index < bytes.count, state == .negotiating {
            let need: Int
            switch phase {
            case .greeting: need = 18
            case .replyHeader: need = 20
            case .replyData(_, _, let length): need = length
            case .exportNameReply(let length): need = length
            case .done: return index
            }
            let take = min(need - pending.count, bytes.count - index)
            pending.append(contentsOf: bytes[index..<index + take])
            index += take
            if pending.count == need { completeMessage() }
        }
        // A reply without data completes with its header.
        if case .replyData(_, _, 0) = phase, state == .negotiating { completeMessage() }
        return index
    }

    public mutating func feed(_ bytes: [UInt8]) -> [UInt8] {
        let used = bytes.withUnsafeBytes { feed($0) }
        return Array(bytes[used...])
    }

    private mutating func fail(_ message: String) {
        state = .failed(NBDProtocolError(message))
        phase = .done
        pending = []
    }

    private mutating func completeMessage() {
        let message = pending
        pending.removeAll(keepingCapacity: true)
        switch phase {
        case .greeting: greeting(message)
        case .replyHeader(let option): replyHeader(message, option: option)
        case .replyData(let option, let type, _):
            phase = .replyHeader(option: option)
            reply(option: option, type: type, data: message)
        case .exportNameReply: exportNameReply(message)
        case .done: break
        }
    }

    private mutating func greeting(_ bytes: [UInt8]) {
        var reader = NBDByteReader(bytes)
        guard reader.get64() == NBDMagic.nbd else { return fail("NBD server greeting does not start with NBDMAGIC") }
        let second = reader.get64() ?? 0
        guard second == NBDMagic.option else {
            return fail("NBD server greeting has magic 0x\(String(second, radix: 16)): not a newstyle server")
        }
        let flags = NBDHandshakeFlags(rawValue: reader.get16() ?? 0)
        serverNoZeroes = flags.contains(.noZeroes)
        var clientFlags: NBDClientFlags = serverNoZeroes ? [.noZeroes] : []
        guard flags.contains(.fixedNewstyle) else {
            // An old server takes nothing but EXPORT_NAME.
            guard mode == .go else { return fail("NBD server does not support fixed newstyle negotiation") }
            appendFlags(clientFlags)
            return sendExportName()
        }
        clientFlags.insert(.fixedNewstyle)
        appendFlags(clientFlags)
        if wantStructuredReplies || isListingMetaContexts {
            send(option: NBDOption.structuredReply, data: [])
        } else {
            afterStructuredReply()
        }
    }

    private var isListingMetaContexts: Bool {
        if case .listMetaContexts = mode { return true }
        return false
    }

    private mutating func appendFlags(_ flags: NBDClientFlags) {
        var writer = NBDByteWriter()
        writer.put32(flags.rawValue)
        outbound.append(contentsOf: writer.bytes)
    }

    private mutating func send(option: UInt32, data: [UInt8]) {
        var writer = NBDByteWriter()
        writer.put64(NBDMagic.option)
        writer.put32(option)
        writer.put32(UInt32(data.count))
        writer.put(data)
        outbound.append(contentsOf: writer.bytes)
        phase = .replyHeader(option: option)
    }

    private mutating func replyHeader(_ bytes: [UInt8], option: UInt32) {
        var reader = NBDByteReader(bytes)
        let magic = reader.get64() ?? 0
        guard magic == NBDMagic.optionReply else {
            return fail("NBD server sent option reply magic 0x\(String(magic, radix: 16))")
        }
        let repliedOption = reader.get32() ?? 0
        guard repliedOption == option else {
            return fail("NBD server replied to option \(repliedOption) while option \(option) was pending")
        }
        let type = reader.get32() ?? 0
        let length = Int(reader.get32() ?? 0)
        guard length <= Self.maxReplyBytes else { return fail("NBD server sent a \(length)-byte option reply") }
        phase = .replyData(option: option, type: type, length: length)
    }

    private static func errorName(_ type: UInt32) -> String {
        switch type {
        case NBDOptionReplyType.errUnsupported: return "unsupported"
        case NBDOptionReplyType.errPolicy: return "denied by policy"
        case NBDOptionReplyType.errInvalid: return "invalid"
        case NBDOptionReplyType.errPlatform: return "not available on this platform"
        case NBDOptionReplyType.errTLSRequired: return "TLS required"
        case NBDOptionReplyType.errUnknown: return "export unknown"
        case NBDOptionReplyType.errShutdown: return "server shutting down"
        case NBDOptionReplyType.errBlockSizeRequired: return "block size negotiation required"
        case NBDOptionReplyType.errTooBig: return "too big"
        default: return "error 0x\(String(type, radix: 16))"
        }
    }

    private mutating func reply(option: UInt32, type: UInt32, data: [UInt8]) {
        if NBDOptionReplyType.isError(type) {
            let text = String(decoding: data.prefix(4096), as: UTF8.self)
            return optionRefused(option: option, type: type, detail: "\(Self.errorName(type))\(text.isEmpty ? "" : ": \(text)")")
        }
        var reader = NBDByteReader(data)
        switch (option, type) {
        case (NBDOption.structuredReply, NBDOptionReplyType.ack):
            result.structuredReplies = true
            afterStructuredReply()
        case (NBDOption.setMetaContext, NBDOptionReplyType.metaContext), (NBDOption.listMetaContext, NBDOptionReplyType.metaContext):
            guard let id = reader.get32(), let name = reader.getString(reader.remaining) else {
                return fail("NBD server sent a malformed meta context reply")
            }
            if option == NBDOption.setMetaContext {
                result.metaContexts.append(.init(id: id, name: name))
            } else {
                result.listedMetaContexts.append(name)
            }
        case (NBDOption.setMetaContext, NBDOptionReplyType.ack):
            sendGoOrInfo()
        case (NBDOption.listMetaContext, NBDOptionReplyType.ack), (NBDOption.list, NBDOptionReplyType.ack):
            abort()
        case (NBDOption.list, NBDOptionReplyType.server):
            guard let length = reader.get32(), Int(length) <= reader.remaining, let name = reader.getString(Int(length)) else {
                return fail("NBD server sent a malformed export list entry")
            }
            let description = reader.getString(reader.remaining) ?? ""
            result.exports.append(.init(name: name, description: description))
        case (NBDOption.go, NBDOptionReplyType.info), (NBDOption.info, NBDOptionReplyType.info):
            info(&reader, length: data.count)
        case (NBDOption.go, NBDOptionReplyType.ack), (NBDOption.info, NBDOptionReplyType.ack):
            guard result.transmissionFlags.contains(.hasFlags) else {
                return fail("NBD server acknowledged option \(option) without sending NBD_INFO_EXPORT")
            }
            if option == NBDOption.go {
                phase = .done
                state = .connected(result)
            } else {
                abort()
            }
        default:
            fail("NBD server sent reply type \(type) to option \(option)")
        }
    }

    private mutating func optionRefused(option: UInt32, type: UInt32, detail: String) {
        if type == NBDOptionReplyType.errShutdown { return fail("NBD server is shutting down") }
        switch option {
        case NBDOption.structuredReply:
            // Old servers: go on with simple replies.
            guard !isListingMetaContexts else { return fail("NBD server refused structured replies: \(detail)") }
            afterStructuredReply()
        case NBDOption.setMetaContext:
            result.metaContexts = []
            sendGoOrInfo()
        case NBDOption.go where type == NBDOptionReplyType.errUnsupported:
            result.transmissionFlags = []
            result.blockSize = nil
            sendExportName()
        default:
            fail("NBD server refused \(Self.optionName(option)) for export \"\(exportName)\": \(detail)")
        }
    }

    private static func optionName(_ option: UInt32) -> String {
        switch option {
        case NBDOption.go: return "NBD_OPT_GO"
        case NBDOption.info: return "NBD_OPT_INFO"
        case NBDOption.list: return "NBD_OPT_LIST"
        case NBDOption.listMetaContext: return "NBD_OPT_LIST_META_CONTEXT"
        default: return "option \(option)"
        }
    }

    private mutating func info(_ reader: inout NBDByteReader, length: Int) {
        guard let infoType = reader.get16() else { return fail("NBD server sent an empty NBD_REP_INFO") }
        switch infoType {
        case NBDInfoType.export:
            guard length == 12, let size = reader.get64(), let flags = reader.get16() else {
                return fail("NBD server sent NBD_INFO_EXPORT of \(length) bytes, expected 12")
            }
            guard NBDTransmissionFlags(rawValue: flags).contains(.hasFlags) else {
                return fail("NBD server sent transmission flags without HAS_FLAGS")
            }
            result.sizeBytes = size
            result.transmissionFlags = NBDTransmissionFlags(rawValue: flags)
        case NBDInfoType.name:
            result.canonicalName = reader.getString(reader.remaining)
        case NBDInfoType.description:
            result.description = reader.getString(reader.remaining)
        case NBDInfoType.blockSize:
            guard length == 14, let minimum = reader.get32(), let preferred = reader.get32(), let maximum = reader.get32() else {
                return fail("NBD server sent NBD_INFO_BLOCK_SIZE of \(length) bytes, expected 14")
            }
            let constraints = NBDBlockSizeConstraints(minimum: minimum, preferred: preferred, maximumPayload: maximum)
            guard constraints.isValid else {
                return fail("NBD server sent invalid block sizes \(minimum)/\(preferred)/\(maximum)")
            }
            result.blockSize = constraints
        default:
            break  // the spec tells clients to ignore information they do not know
        }
    }

    private mutating func afterStructuredReply() {
        switch mode {
        case .go where result.structuredReplies && !metaContextQueries.isEmpty:
            send(option: NBDOption.setMetaContext, data: metaContextData(metaContextQueries))
        case .go, .info:
            sendGoOrInfo()
        case .list:
            send(option: NBDOption.list, data: [])
        case .listMetaContexts(let queries):
            send(option: NBDOption.listMetaContext, data: metaContextData(queries))
        }
    }

    private func metaContextData(_ queries: [String]) -> [UInt8] {
        var writer = NBDByteWriter()
        writer.put32(UInt32(exportName.utf8.count))
        writer.putString(exportName)
        writer.put32(UInt32(queries.count))
        for query in queries {
            writer.put32(UInt32(query.utf8.count))
            writer.putString(query)
        }
        return writer.bytes
    }

    private mutating func sendGoOrInfo() {
        var writer = NBDByteWriter()
        writer.put32(UInt32(exportName.utf8.count))
        writer.putString(exportName)
        let requests: [UInt16] = mode == .info ? [NBDInfoType.name, NBDInfoType.description, NBDInfoType.blockSize] : [NBDInfoType.blockSize]
        writer.put16(UInt16(requests.count))
        for request in requests { writer.put16(request) }
        send(option: mode == .info ? NBDOption.info : NBDOption.go, data: writer.bytes)
    }

    private mutating func sendExportName() {
        var writer = NBDByteWriter()
        writer.put64(NBDMagic.option)
        writer.put32(NBDOption.exportName)
        writer.put32(UInt32(exportName.utf8.count))
        writer.putString(exportName)
        outbound.append(contentsOf: writer.bytes)
        result.usedExportNameFallback = true
        phase = .exportNameReply(length: serverNoZeroes ? 10 : 134)
    }

    private mutating func exportNameReply(_ bytes: [UInt8]) {
        var reader = NBDByteReader(bytes)
        result.sizeBytes = reader.get64() ?? 0
        result.transmissionFlags = NBDTransmissionFlags(rawValue: reader.get16() ?? 0)
        guard result.transmissionFlags.contains(.hasFlags) else { return fail("NBD server sent transmission flags without HAS_FLAGS") }
        phase = .done
        state = .connected(result)
    }

    private mutating func abort() {
        var writer = NBDByteWriter()
        writer.put64(NBDMagic.option)
        writer.put32(NBDOption.abort)
        writer.put32(0)
        outbound.append(contentsOf: writer.bytes)
        phase = .done
        state = .finished(result)
    }
}
