/// The server side of fixed-newstyle negotiation as a value: the connection feeds it whatever
/// bytes arrived (any fragmentation), sends what `takeOutbound()` returns, and acts on the events.
/// It buffers at most one option's data (bounded by `maxOptionDataBytes`) and never traps on input.
public struct NBDServerHandshake: Sendable {
    /// Largest option payload buffered: a 4096-byte name plus room for a few 4096-byte meta-context
    /// queries and info requests. Larger options are drained unread and refused.
    public static let maxOptionDataBytes = 4 * 4096 + 64
    /// Largest option drained to answer NBD_REP_ERR_TOO_BIG or ERR_UNSUP; beyond it the client is
    /// treated as an attack and dropped (doc/proto.md allows a hard disconnect for denial of service).
    public static let maxDiscardBytes = 1 << 20
    /// Options one connection may send before it is dropped, so a client cannot haggle forever.
    public static let maxOptions = 1024
    static let maxStringBytes = 4096

    enum Phase: Sendable {
        case clientFlags
        case optionHeader
        case optionData(option: UInt32, length: Int)
        case discarding(option: UInt32, remaining: Int, replyType: UInt32)
        case transmission
        case closed
    }

    private let catalog: any NBDExportCatalog
    private var phase = Phase.clientFlags
    private var pending: [UInt8] = []
    private var outbound: [UInt8] = []
    private var fixedNewstyle = false
    private var noZeroes = false
    private var structuredReplies = false
    private var metaExportName: String?
    private var metaContexts: [NBDMetaContext] = []
    private var optionCount = 0
    private var shuttingDown = false

    /// Starts a connection: the greeting (NBDMAGIC, IHAVEOPT, handshake flags) is queued at once.
    public init(catalog: any NBDExportCatalog) {
        self.catalog = catalog
        var writer = NBDByteWriter()
        writer.put64(NBDMagic.nbd)
        writer.put64(NBDMagic.option)
        writer.put16(NBDHandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue)
        outbound = writer.bytes
        pending.reserveCapacity(16)
    }

    /// Bytes to send to the client, in order; the queue is emptied.
    public mutating func takeOutbound() -> [UInt8] {
        defer { outbound.removeAll(keepingCapacity: true) }
        return outbound
    }

    public var isFinished: Bool {
        switch phase {
        case .transmission, .closed: return true
        default: return false
        }
    }

    /// Refuse every further option but ABORT with NBD_REP_ERR_SHUTDOWN, as a stopping server should.
    public mutating func beginShutdown() { shuttingDown = true }

    /// Feeds received bytes. Returns how many were consumed (fewer than given only once the
    /// handshake is finished: the rest belong to the transmission phase) and what happened.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> (consumed: Int, events: [NBDServerHandshakeEvent]) {
        var events: [NBDServerHandshakeEvent] = []
        var index = 0
        while index < bytes.count {
            switch phase {
            case .transmission, .closed:
                return (index, events)
            case .clientFlags:
                index += fill(to: 4, from: bytes, at: index)
                guard pending.count == 4 else { continue }
                let flags = NBDClientFlags(rawValue: UInt32(bigEndianBytes: pending))
                pending.removeAll(keepingCapacity: true)
                guard flags.isSubset(of: .known) else {
                    close(&events, "client flags 0x\(String(flags.rawValue, radix: 16)) have unknown bits")
                    continue
                }
                fixedNewstyle = flags.contains(.fixedNewstyle)
                noZeroes = flags.contains(.noZeroes)
                phase = .optionHeader
            case .optionHeader:
                index += fill(to: 16, from: bytes, at: index)
                guard pending.count == 16 else { continue }
                let magic = UInt64(bigEndianBytes: pending[0..<8])
                let option = UInt32(bigEndianBytes: pending[8..<12])
                let length = UInt32(bigEndianBytes: pending[12..<16])
                pending.removeAll(keepingCapacity: true)
                beginOption(magic: magic, option: option, length: length, &events)
            case .optionData(let option, let length):
                index += fill(to: length, from: bytes, at: index)
                guard pending.count == length else { continue }
                let data = pending
                pending.removeAll(keepingCapacity: true)
                phase = .optionHeader
                handle(option: option, data: data, &events)
            case .discarding(let option, let remaining, let replyType):
                let take = min(remaining, bytes.count - index)
                index += take
                if take < remaining {
                    phase = .discarding(option: option, remaining: remaining - take, replyType: replyType)
                    continue
                }
                phase = .optionHeader
                finishDiscarded(option: option, replyType: replyType, &events)
            }
        }
        // A header or data that completes exactly at the end of the input is handled in the loop;
        // an option with no data completes as soon as its header does.
        if case .optionData(let option, 0) = phase {
            phase = .optionHeader
            handle(option: option, data: [], &events)
        }
        if case .discarding(let option, 0, let replyType) = phase {
            phase = .optionHeader
            finishDiscarded(option: option, replyType: replyType, &events)
        }
        return (index, events)
    }

    /// `feed` for an array, returning the bytes left over for the transmission phase.
    public mutating func feed(_ bytes: [UInt8]) -> (leftover: [UInt8], events: [NBDServerHandshakeEvent]) {
        let (consumed, events) = bytes.withUnsafeBytes { feed($0) }
        return (Array(bytes[consumed...]), events)
    }

    // MARK: - Option framing

    private mutating func fill(to count: Int, from bytes: UnsafeRawBufferPointer, at index: Int) -> Int {
        let take = min(count - pending.count, bytes.count - index)
        pending.append(contentsOf: bytes[index..<index + take])
        return take
    }

    private mutating func beginOption(magic: UInt64, option: UInt32, length: UInt32, _ events: inout [NBDServerHandshakeEvent]) {
        guard magic == NBDMagic.option else {
            return close(&events, "option magic 0x\(String(magic, radix: 16)) is not IHAVEOPT")
        }
        optionCount += 1
        guard optionCount <= Self.maxOptions else {
            return close(&events, "more than \(Self.maxOptions) options")
        }
        guard fixedNewstyle || option == NBDOption.exportName else {
            return close(&events, "option \(option) from a client that did not negotiate fixed newstyle")
        }
        let length = Int(length)
        if length > Self.maxOptionDataBytes || (option == NBDOption.exportName && length > Self.maxStringBytes) {
            // EXPORT_NAME cannot be answered with an error, so an oversized one ends the session.
            guard option != NBDOption.exportName, length <= Self.maxDiscardBytes else {
                return close(&events, "option \(option) carries \(length) bytes")
            }
            let reply = option == NBDOption.abort ? NBDOptionReplyType.ack : NBDOptionReplyType.errTooBig
            phase = .discarding(option: option, remaining: length, replyType: reply)
            return
        }
        if !Self.knownOptions.contains(option) {
            // Unknown options are skipped unread: their data has no meaning here.
            phase = .discarding(option: option, remaining: length, replyType: NBDOptionReplyType.errUnsupported)
            return
        }
        phase = .optionData(option: option, length: length)
    }

    private static let knownOptions: Set<UInt32> = [
        NBDOption.exportName, NBDOption.abort, NBDOption.list, NBDOption.startTLS, NBDOption.info,
        NBDOption.go, NBDOption.structuredReply, NBDOption.listMetaContext, NBDOption.setMetaContext,
    ]

    private mutating func finishDiscarded(option: UInt32, replyType: UInt32, _ events: inout [NBDServerHandshakeEvent]) {
        if option == NBDOption.abort { return handle(option: option, data: [], &events) }
        let message = replyType == NBDOptionReplyType.errTooBig ? "option data too large" : "option \(option) not supported"
        refuse(option: option, type: replyType, message, &events)
    }

    private mutating func close(_ events: inout [NBDServerHandshakeEvent], _ reason: String) {
        phase = .closed
        pending = []
        events.append(.disconnect(reason: reason))
    }

    // MARK: - Option replies

    private mutating func reply(option: UInt32, type: UInt32, payload: [UInt8] = []) {
        var writer = NBDByteWriter()
        writer.put64(NBDMagic.optionReply)
        writer.put32(option)
        writer.put32(type)
        writer.put32(UInt32(payload.count))
        outbound.append(contentsOf: writer.bytes)
        outbound.append(contentsOf: payload)
    }

    private mutating func refuse(option: UInt32, type: UInt32, _ message: String, _ events: inout [NBDServerHandshakeEvent]) {
        reply(option: option, type: type, payload: Array(message.utf8.prefix(Self.maxStringBytes)))
        events.append(.optionRefused(option: option, replyType: type))
    }

    // MARK: - Options

    private mutating func handle(option: UInt32, data: [UInt8], _ events: inout [NBDServerHandshakeEvent]) {
        if shuttingDown && option != NBDOption.abort {
            if option == NBDOption.exportName { return close(&events, "server shutting down") }
            return refuse(option: option, type: NBDOptionReplyType.errShutdown, "server is shutting down", &events)
        }
        switch option {
        case NBDOption.exportName:
            exportName(data, &events)
        case NBDOption.abort:
            // doc/proto.md: data on ABORT is ignored, and the reply is always ACK.
            reply(option: option, type: NBDOptionReplyType.ack)
            phase = .closed
            events.append(.aborted)
        case NBDOption.list:
            guard data.isEmpty else {
                return refuse(option: option, type: NBDOptionReplyType.errInvalid, "NBD_OPT_LIST takes no data", &events)
            }
            for export in catalog.allExports() {
                var writer = NBDByteWriter()
                let name = Array(export.name.utf8.prefix(Self.maxStringBytes))
                writer.put32(UInt32(name.count))
                writer.put(name)
                writer.put(export.description.utf8.prefix(Self.maxStringBytes))
                reply(option: option, type: NBDOptionReplyType.server, payload: writer.bytes)
            }
            reply(option: option, type: NBDOptionReplyType.ack)
        case NBDOption.startTLS:
            refuse(option: option, type: NBDOptionReplyType.errPolicy, "TLS is not configured on this server", &events)
        case NBDOption.info, NBDOption.go:
            infoOrGo(option: option, data, &events)
        case NBDOption.structuredReply:
            guard data.isEmpty else {
                return refuse(option: option, type: NBDOptionReplyType.errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data", &events)
            }
            guard !structuredReplies else {
                return refuse(option: option, type: NBDOptionReplyType.errInvalid, "structured replies already negotiated", &events)
            }
            structuredReplies = true
            reply(option: option, type: NBDOptionReplyType.ack)
            events.append(.structuredRepliesNegotiated)
        case NBDOption.listMetaContext, NBDOption.setMetaContext:
            metaContext(option: option, data, &events)
        default:
            refuse(option: option, type: NBDOptionReplyType.errUnsupported, "option \(option) not supported", &events)
        }
    }

    private mutating func exportName(_ data: [UInt8], _ events: inout [NBDServerHandshakeEvent]) {
        var reader = NBDByteReader(data)
        guard let name = reader.getString(data.count) else { return close(&events, "export name is not valid UTF-8") }
        guard let export = catalog.export(named: name) else { return close(&events, "no export named \"\(name)\"") }
        let flags = export.transmissionFlags(structuredReplies: structuredReplies)
        var writer = NBDByteWriter()
        writer.put64(export.sizeBytes)
        writer.put16(flags.rawValue)
        if !noZeroes { writer.put(repeatElement(UInt8(0), count: 124)) }
        outbound.append(contentsOf: writer.bytes)
        enterTransmission(export: export, requestedName: name, flags: flags, blockSizeAcknowledged: false, viaExportName: true, &events)
    }

    private mutating func infoOrGo(option: UInt32, _ data: [UInt8], _ events: inout [NBDServerHandshakeEvent]) {
        var reader = NBDByteReader(data)
        guard data.count >= 6, let nameLength = reader.get32(), Int(nameLength) <= data.count - 6,
            nameLength <= Self.maxStringBytes
        else {
            return refuse(option: option, type: NBDOptionReplyType.errInvalid, "malformed export name length", &events)
        }
        guard let name = reader.getString(Int(nameLength)) else {
            return refuse(option: option, type: NBDOptionReplyType.errInvalid, "export name is not valid UTF-8", &events)
        }
        guard let count = reader.get16(), reader.remaining == Int(count) * 2 else {
            return refuse(option: option, type: NBDOptionReplyType.errInvalid, "information request count does not match the data", &events)
        }
        var requests: Set<UInt16> = []
        for _ in 0..<count { if let request = reader.get16() { requests.insert(request) } }
        guard let export = catalog.export(named: name) else {
            return refuse(option: option, type: NBDOptionReplyType.errUnknown, "no export named \"\(name)\"", &events)
        }
        let flags = export.transmissionFlags(structuredReplies: structuredReplies)
        var info = NBDByteWriter()
        info.put16(NBDInfoType.export)
        info.put64(export.sizeBytes)
        info.put16(flags.rawValue)
        reply(option: option, type: NBDOptionReplyType.info, payload: info.bytes)
        if requests.contains(NBDInfoType.name) {
            var writer = NBDByteWriter()
            writer.put16(NBDInfoType.name)
            writer.put(export.name.utf8.prefix(Self.maxStringBytes))
            reply(option: option, type: NBDOptionReplyType.info, payload: writer.bytes)
        }
        if requests.contains(NBDInfoType.description), !export.description.isEmpty {
            var writer = NBDByteWriter()
            writer.put16(NBDInfoType.description)
            writer.put(export.description.utf8.prefix(Self.maxStringBytes))
            reply(option: option, type: NBDOptionReplyType.info, payload: writer.bytes)
        }
        // Sent unasked when the constraints differ from the defaults: the spec says a server MUST
        // advertise non-default constraints, and clients ignore info they do not understand.
        if requests.contains(NBDInfoType.blockSize) || export.blockSize != .default {
            var writer = NBDByteWriter()
            writer.put16(NBDInfoType.blockSize)
            writer.put32(export.blockSize.minimum)
            writer.put32(export.blockSize.preferred)
            writer.put32(export.blockSize.maximumPayload)
            reply(option: option, type: NBDOptionReplyType.info, payload: writer.bytes)
        }
        reply(option: option, type: NBDOptionReplyType.ack)
        if option == NBDOption.go {
            enterTransmission(
                export: export, requestedName: name, flags: flags,
                blockSizeAcknowledged: requests.contains(NBDInfoType.blockSize), viaExportName: false, &events)
        }
    }

    private mutating func enterTransmission(
        export: NBDExport, requestedName: String, flags: NBDTransmissionFlags, blockSizeAcknowledged: Bool,
        viaExportName: Bool, _ events: inout [NBDServerHandshakeEvent]
    ) {
        // Contexts only hold for the export they were set on (doc/proto.md, SET_META_CONTEXT).
        let contexts = metaExportName == requestedName && structuredReplies ? metaContexts : []
        phase = .transmission
        events.append(.transmission(NBDNegotiatedSession(
            export: export, transmissionFlags: flags, structuredReplies: structuredReplies, metaContexts: contexts,
            blockSizeAcknowledged: blockSizeAcknowledged, viaExportName: viaExportName)))
    }

    private mutating func metaContext(option: UInt32, _ data: [UInt8], _ events: inout [NBDServerHandshakeEvent]) {
        let isSet = option == NBDOption.setMetaContext
        // SET replaces the selection even when it fails (doc/proto.md).
        if isSet { metaContexts = []; metaExportName = nil }
        guard structuredReplies else {
            return refuse(option: option, type: NBDOptionReplyType.errInvalid, "structured replies not negotiated", &events)
        }
        var reader = NBDByteReader(data)
        guard let nameLength = reader.get32(), nameLength <= Self.maxStringBytes,
            let name = reader.getString(Int(nameLength)), let queryCount = reader.get32()
        else {
            return refuse(option: option, type: NBDOptionReplyType.errInvalid, "malformed meta context request", &events)
        }
        var queries: [String] = []
        for _ in 0..<min(queryCount, UInt32(data.count)) {
            guard let length = reader.get32(), length <= Self.maxStringBytes, let query = reader.getString(Int(length)) else {
                return refuse(option: option, type: NBDOptionReplyType.errInvalid, "malformed meta context query", &events)
            }
            queries.append(query)
        }
        guard queries.count == Int(queryCount), reader.remaining == 0 else {
            return refuse(option: option, type: NBDOptionReplyType.errInvalid, "meta context query count does not match the data", &events)
        }
        guard let export = catalog.export(named: name) else {
            return refuse(option: option, type: NBDOptionReplyType.errUnknown, "no export named \"\(name)\"", &events)
        }
        var selected: [NBDMetaContext] = []
        if queries.isEmpty {
            // No queries lists everything but selects nothing.
            if !isSet { selected = export.metaContexts }
        } else {
            for query in queries {
                for context in NBDMetaContext.matching(query: query, available: export.metaContexts, forList: !isSet)
                where !selected.contains(context) {
                    selected.append(context)
                }
            }
        }
        for context in selected {
            var writer = NBDByteWriter()
            writer.put32(isSet ? context.id : 0)  // LIST's IDs are reserved and zero
            writer.putString(context.rawValue)
            reply(option: option, type: NBDOptionReplyType.metaContext, payload: writer.bytes)
        }
        reply(option: option, type: NBDOptionReplyType.ack)
        if isSet {
            metaContexts = selected
            metaExportName = name
            events.append(.metaContextsSelected(exportName: name, contexts: selected))
        }
    }
}

extension FixedWidthInteger {
    /// The integer stored big-endian in exactly `MemoryLayout<Self>.size` bytes.
    init(bigEndianBytes bytes: some Collection<UInt8>) {
        var value: Self = 0
        for byte in bytes { value = value << 8 | Self(byte) }
        self = value
    }
}
