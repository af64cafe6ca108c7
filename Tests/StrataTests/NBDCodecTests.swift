import Foundation
import Glibc
import StrataNBD
import Testing

/// Runs a client and a server handshake against each other in memory, each side's bytes cut into
/// random fragments, until neither has anything left to say.
private func negotiate(
    _ client: inout NBDClientHandshake, _ server: inout NBDServerHandshake, random: inout SeededRandom
) -> [NBDServerHandshakeEvent] {
    var events: [NBDServerHandshakeEvent] = []
    var toClient: [UInt8] = []
    var toServer: [UInt8] = []
    for _ in 0..<10_000 {
        toClient += server.takeOutbound()
        toServer += client.takeOutbound()
        if toClient.isEmpty && toServer.isEmpty { break }
        if !toClient.isEmpty {
            let count = 1 + random.below(min(toClient.count, 64))
            let used = Array(toClient.prefix(count)).withUnsafeBytes { client.feed($0) }
            toClient.removeFirst(max(used, count))
        }
        if !toServer.isEmpty {
            let count = 1 + random.below(min(toServer.count, 64))
            let (_, newEvents) = server.feed(Array(toServer.prefix(count)))
            events += newEvents
            toServer.removeFirst(count)
        }
    }
    return events
}

private let exports = NBDExportList([
    NBDExport(name: "disk", description: "the main disk", sizeBytes: 1 << 20, canMultiConn: true),
    NBDExport(
        name: "ro", sizeBytes: 64 << 10, isReadOnly: true,
        blockSize: NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximumPayload: 1 << 20), metaContexts: [.baseAllocation]),
])

@Suite struct NBDCodecTests {
    @Test func goNegotiatesWhatBothSidesAgreeOn() {
        var random = SeededRandom(state: 7)
        for structured in [false, true] {
            for queries in [[], ["base:allocation"], ["base:allocation", "qemu:allocation-depth"], ["qemu:"]] {
                for name in ["disk", "ro", ""] {
                    var client = NBDClientHandshake(exportName: name, structuredReplies: structured, metaContextQueries: queries)
                    var server = NBDServerHandshake(catalog: exports)
                    let events = negotiate(&client, &server, random: &random)
                    guard case .connected(let result) = client.state, case .transmission(let session)? = events.last else {
                        Issue.record("no connection for \(name) \(structured) \(queries): \(client.state) \(events)")
                        continue
                    }
                    let export = exports.export(named: name)!
                    #expect(result.sizeBytes == export.sizeBytes)
                    #expect(result.transmissionFlags == session.transmissionFlags)
                    #expect(result.transmissionFlags.contains(.readOnly) == export.isReadOnly)
                    #expect(result.transmissionFlags.contains(.canMultiConn) == export.canMultiConn)
                    #expect(result.structuredReplies == structured && session.structuredReplies == structured)
                    #expect(result.blockSize == export.blockSize && session.blockSizeAcknowledged)
                    let expected = structured ? queries.compactMap(NBDMetaContext.init(rawValue:)).filter(export.metaContexts.contains) : []
                    #expect(session.metaContexts == expected)
                    #expect(result.metaContexts.map(\.name) == expected.map(\.rawValue))
                    #expect(result.metaContexts.map(\.id) == expected.map(\.id))
                    #expect(!result.usedExportNameFallback && !session.viaExportName)
                }
            }
        }
    }

    @Test func listInfoAndMetaContextListing() {
        var random = SeededRandom(state: 11)
        var client = NBDClientHandshake(exportName: "", mode: .list)
        var server = NBDServerHandshake(catalog: exports)
        var events = negotiate(&client, &server, random: &random)
        guard case .finished(let listed) = client.state else { Issue.record("\(client.state)"); return }
        #expect(listed.exports == [.init(name: "disk", description: "the main disk"), .init(name: "ro", description: "")])
        #expect(events.last == .aborted)

        client = NBDClientHandshake(exportName: "ro", mode: .info)
        server = NBDServerHandshake(catalog: exports)
        _ = negotiate(&client, &server, random: &random)
        guard case .finished(let info) = client.state else { Issue.record("\(client.state)"); return }
        #expect(info.sizeBytes == 64 << 10 && info.canonicalName == "ro")
        #expect(info.transmissionFlags.contains(.readOnly) && !info.transmissionFlags.contains(.sendTrim))
        #expect(info.blockSize == NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximumPayload: 1 << 20))

        for (queries, expected) in [
            ([String](), ["base:allocation", "qemu:allocation-depth"]), (["qemu:"], ["qemu:allocation-depth"]),
            (["base:"], ["base:allocation"]), (["nope:x", "base:other"], []),
        ] {
            client = NBDClientHandshake(exportName: "disk", mode: .listMetaContexts(queries))
            server = NBDServerHandshake(catalog: exports)
            events = negotiate(&client, &server, random: &random)
            guard case .finished(let contexts) = client.state else { Issue.record("\(client.state)"); return }
            #expect(contexts.listedMetaContexts == expected)
        }

        // An unknown export fails GO with the server's message.
        client = NBDClientHandshake(exportName: "missing")
        server = NBDServerHandshake(catalog: exports)
        _ = negotiate(&client, &server, random: &random)
        guard case .failed(let error) = client.state else { Issue.record("\(client.state)"); return }
        #expect(error.message.contains("export unknown"))
    }

    @Test func bytesMatchTheSpecLayouts() {
        var server = NBDServerHandshake(catalog: exports)
        // NBDMAGIC, IHAVEOPT, flags FIXED_NEWSTYLE | NO_ZEROES.
        #expect(server.takeOutbound() == [0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0x00, 0x03])
        // Client flags FIXED_NEWSTYLE only, then EXPORT_NAME "ro": size, flags, 124 zeroes.
        let (_, events) = server.feed([0, 0, 0, 1, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 1, 0, 0, 0, 2, 0x72, 0x6f])
        // HAS_FLAGS|READ_ONLY|SEND_FLUSH|SEND_FUA|SEND_CACHE = 0x040f.
        #expect(server.takeOutbound() == [0, 0, 0, 0, 0, 1, 0, 0, 0x04, 0x0f] + [UInt8](repeating: 0, count: 124))
        guard case .transmission(let session)? = events.last else { Issue.record("\(events)"); return }
        #expect(session.viaExportName && session.export.name == "ro")

        var buffer = [UInt8](repeating: 0xAA, count: 64)
        buffer.withUnsafeMutableBytes { _ = NBDReplyEncoder.simpleReply(cookie: 0x0102_0304_0506_0708, error: .invalid, into: $0) }
        #expect(Array(buffer[0..<16]) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 1, 2, 3, 4, 5, 6, 7, 8])
        buffer.withUnsafeMutableBytes { _ = NBDReplyEncoder.offsetHole(cookie: 9, offset: 0x1000, holeLength: 0x200, done: true, into: $0) }
        #expect(Array(buffer[0..<32]) == [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0])
        buffer.withUnsafeMutableBytes { _ = NBDReplyEncoder.errorChunk(cookie: 1, error: .io, message: "hi", offset: 5, done: false, into: $0) }
        #expect(Array(buffer[0..<36]) == [0x66, 0x8e, 0x33, 0xef, 0, 0, 0x80, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 5, 0, 2, 0x68, 0x69, 0, 0, 0, 0, 0, 0, 0, 5])
        let request = NBDRequest(command: .write, flags: .fua, cookie: 2, offset: 512, length: 4096)
        _ = buffer.withUnsafeMutableBytes { request.encode(into: $0) }
        #expect(Array(buffer[0..<28]) == [0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0x10, 0])
        #expect(buffer.withUnsafeBytes { try? NBDRequest.parse($0) } == request)
    }

    /// Feeds a greeting reply plus `option` and returns the server's events and output.
    private func serverAnswer(_ bytes: [UInt8], flags: UInt32 = 3) -> (events: [NBDServerHandshakeEvent], output: [UInt8]) {
        var server = NBDServerHandshake(catalog: exports)
        _ = server.takeOutbound()
        var input: [UInt8] = withUnsafeBytes(of: flags.bigEndian) { Array($0) }
        input += bytes
        let (_, events) = server.feed(input)
        return (events, server.takeOutbound())
    }

    private func option(_ option: UInt32, length: UInt32? = nil, _ data: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = [0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54]
        bytes += withUnsafeBytes(of: option.bigEndian) { Array($0) }
        bytes += withUnsafeBytes(of: (length ?? UInt32(data.count)).bigEndian) { Array($0) }
        return bytes + data
    }

    private func replyType(_ output: [UInt8]) -> UInt32? {
        guard output.count >= 20 else { return nil }
        return output[12..<16].reduce(0) { $0 << 8 | UInt32($1) }
    }

    @Test func hostileHandshakesGetErrorsOrDisconnects() {
        func isDisconnect(_ events: [NBDServerHandshakeEvent]) -> Bool {
            if case .disconnect? = events.last { return true }
            return false
        }
        #expect(isDisconnect(serverAnswer([], flags: 0x8000_0001).events))
        #expect(isDisconnect(serverAnswer([0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x55] + [UInt8](repeating: 0, count: 8)).events))
        #expect(replyType(serverAnswer(option(77, [1, 2, 3])).output) == NBDOptionReplyType.errUnsupported)
        #expect(replyType(serverAnswer(option(NBDOption.startTLS)).output) == NBDOptionReplyType.errPolicy)
        #expect(replyType(serverAnswer(option(NBDOption.list, [0])).output) == NBDOptionReplyType.errInvalid)
        #expect(replyType(serverAnswer(option(NBDOption.setMetaContext, [0, 0, 0, 0, 0, 0, 0, 0])).output) == NBDOptionReplyType.errInvalid)
        // GO whose name length points past the data, and one whose info count lies.
        #expect(replyType(serverAnswer(option(NBDOption.go, [0, 0, 1, 0, 0x61, 0, 0])).output) == NBDOptionReplyType.errInvalid)
        #expect(replyType(serverAnswer(option(NBDOption.go, [0, 0, 0, 0, 0, 5, 0, 3])).output) == NBDOptionReplyType.errInvalid)
        // Oversized: drained and refused when moderate, disconnected when huge or for EXPORT_NAME.
        let big = NBDServerHandshake.maxOptionDataBytes + 1
        #expect(replyType(serverAnswer(option(NBDOption.info, [UInt8](repeating: 0, count: big))).output) == NBDOptionReplyType.errTooBig)
        #expect(isDisconnect(serverAnswer(option(NBDOption.info, length: 0xFFFF_FFFF)).events))
        #expect(isDisconnect(serverAnswer(option(NBDOption.exportName, length: 5000)).events))
        #expect(isDisconnect(serverAnswer(option(NBDOption.exportName, [0x78])).events))
        // Non-fixed clients may only send EXPORT_NAME.
        #expect(isDisconnect(serverAnswer(option(NBDOption.list), flags: 0).events))
        // Truncated input: nothing happens yet, nothing traps.
        #expect(serverAnswer(Array(option(NBDOption.go, [0, 0, 0, 4]).prefix(13))).events.isEmpty)
    }

    @Test func requestValidationFollowsTheSpec() {
        let disk = NBDSessionFixture.session(exports.exports[0], structured: true, contexts: [.baseAllocation])
        let ro = NBDSessionFixture.session(exports.exports[1], structured: false, contexts: [])
        #expect(NBDRequest(command: .read, cookie: 1, offset: 0, length: 4096).validate(for: disk) == .accept)
        #expect(NBDRequest(command: .read, cookie: 1, offset: 1 << 20, length: 0).validate(for: disk) == .accept)
        #expect(reject(NBDRequest(command: .read, cookie: 1, offset: UInt64.max - 10, length: 4096).validate(for: disk)) == .invalid)
        #expect(reject(NBDRequest(command: .write, cookie: 1, offset: (1 << 20) - 1, length: 2).validate(for: disk)) == .noSpace)
        #expect(reject(NBDRequest(type: 99, flags: [], cookie: 1, offset: 0, length: 0).validate(for: disk)) == .invalid)
        #expect(reject(NBDRequest(type: 0, flags: NBDCommandFlags(rawValue: 0x100), cookie: 1, offset: 0, length: 0).validate(for: disk)) == .invalid)
        #expect(reject(NBDRequest(command: .read, flags: .noHole, cookie: 1, offset: 0, length: 512).validate(for: disk)) == .invalid)
        #expect(reject(NBDRequest(command: .write, cookie: 1, offset: 0, length: 512).validate(for: ro)) == .permissionDenied)
        #expect(reject(NBDRequest(command: .trim, cookie: 1, offset: 0, length: 512).validate(for: ro)) == .permissionDenied)
        #expect(reject(NBDRequest(command: .read, cookie: 1, offset: 100, length: 512).validate(for: ro)) == .invalid)
        #expect(reject(NBDRequest(command: .read, cookie: 1, offset: 0, length: 2 << 20).validate(for: disk)) == .invalid)
        #expect(reject(NBDRequest(command: .blockStatus, cookie: 1, offset: 0, length: 512).validate(for: ro)) == .invalid)
        #expect(reject(NBDRequest(command: .blockStatus, cookie: 1, offset: 0, length: 0).validate(for: disk)) == .invalid)
        if case .disconnect = NBDRequest(command: .write, cookie: 1, offset: 0, length: 0xFFFF_0000).validate(for: disk) {} else {
            Issue.record("a 4 GiB write must end the connection")
        }
        var header = [UInt8](repeating: 0, count: 28)
        #expect(throws: NBDProtocolError.self) { try header.withUnsafeBytes { try NBDRequest.parse($0) } }
        header[0] = 0x25
        #expect(throws: NBDProtocolError.self) { try header.withUnsafeBytes { try NBDRequest.parse($0) } }
    }

    private func reject(_ verdict: NBDRequestVerdict) -> NBDErrno? {
        if case .reject(let errno, _) = verdict { return errno }
        return nil
    }

    @Test func replyParserChecksChunksAgainstRequests() throws {
        var parser = NBDReplyParser(structuredReplies: true, contextIDs: [NBDMetaContext.baseAllocation.id])
        try parser.expect(NBDRequest(command: .read, cookie: 5, offset: 4096, length: 8192))
        try parser.expect(NBDRequest(command: .blockStatus, cookie: 6, offset: 0, length: 8192))
        var stream = [UInt8](repeating: 0, count: 4096)
        var length = stream.withUnsafeMutableBytes { NBDReplyEncoder.offsetDataHeader(cookie: 5, offset: 4096, dataLength: 4, done: false, into: $0) }
        var bytes = Array(stream[0..<length]) + [1, 2, 3, 4]
        length = stream.withUnsafeMutableBytes { NBDReplyEncoder.offsetHole(cookie: 5, offset: 4100, holeLength: 8188, done: true, into: $0) }
        bytes += stream[0..<length]
        let descriptors = [NBDBlockDescriptor(length: 4096, flags: 0), NBDBlockDescriptor(length: 4096, flags: 3)]
        length = descriptors.withUnsafeBufferPointer { list in
            stream.withUnsafeMutableBytes { NBDReplyEncoder.blockStatus(cookie: 6, contextID: 1, descriptors: list, done: true, into: $0) }
        }
        bytes += stream[0..<length]
        var events: [NBDReplyEvent] = []
        for byte in bytes { events += try parser.feed([byte]) }
        let data = events.compactMap { event -> [UInt8]? in if case .data(_, _, let d) = event { return d } else { return nil } }
        #expect(data.joined().elementsEqual([1, 2, 3, 4]))
        #expect(events.contains(.hole(cookie: 5, offset: 4100, length: 8188)))
        #expect(events.contains(.completed(cookie: 5, error: nil)))
        #expect(events.contains(.blockStatus(cookie: 6, contextID: 1, descriptors: descriptors)))
        #expect(events.last == .completed(cookie: 6, error: nil) && parser.requestsInFlight == 0)

        // A hole past the request, an unknown cookie, a bad magic: each names the server's fault.
        try parser.expect(NBDRequest(command: .read, cookie: 7, offset: 0, length: 512))
        length = stream.withUnsafeMutableBytes { NBDReplyEncoder.offsetHole(cookie: 7, offset: 0, holeLength: 1024, done: true, into: $0) }
        #expect(throws: NBDProtocolError.self) { try parser.feed(Array(stream[0..<length])) }
        var fresh = NBDReplyParser(structuredReplies: false)
        length = stream.withUnsafeMutableBytes { NBDReplyEncoder.simpleReply(cookie: 9, error: nil, into: $0) }
        #expect(throws: NBDProtocolError.self) { try fresh.feed(Array(stream[0..<length])) }
        fresh = NBDReplyParser(structuredReplies: false)
        #expect(throws: NBDProtocolError.self) { try fresh.feed([0xde, 0xad, 0xbe, 0xef]) }
    }

    @Test func fuzzedStreamsNeverTrap() {
        var random = SeededRandom(state: 2026)
        // A valid client conversation to mutate.
        var client = NBDClientHandshake(exportName: "disk", metaContextQueries: ["base:allocation", "qemu:allocation-depth"])
        var server = NBDServerHandshake(catalog: exports)
        var clientBytes: [UInt8] = []
        var serverBytes: [UInt8] = []
        for _ in 0..<20 {
            let fromServer = server.takeOutbound()
            serverBytes += fromServer
            _ = fromServer.withUnsafeBytes { client.feed($0) }
            let fromClient = client.takeOutbound()
            clientBytes += fromClient
            _ = server.feed(fromClient)
        }
        // A fixed number of seeded rounds, not a wall-clock budget: the same run on any machine.
        for _ in 0..<Self.fuzzRounds {
            var input = random.below(4) == 0 ? (0..<random.below(300)).map { _ in UInt8(truncatingIfNeeded: random.next()) } : clientBytes
            for _ in 0..<random.below(6) where !input.isEmpty { input[random.below(input.count)] = UInt8(truncatingIfNeeded: random.next()) }
            var fuzzServer = NBDServerHandshake(catalog: exports)
            var index = 0
            while index < input.count {
                let count = 1 + random.below(32)
                let (consumed, _) = Array(input[index..<min(index + count, input.count)]).withUnsafeBytes { fuzzServer.feed($0) }
                _ = fuzzServer.takeOutbound()
                if consumed == 0 { break }
                index += consumed
            }
            var reply = serverBytes
            for _ in 0..<random.below(6) where !reply.isEmpty { reply[random.below(reply.count)] = UInt8(truncatingIfNeeded: random.next()) }
            var fuzzClient = NBDClientHandshake(exportName: "disk")
            _ = reply.withUnsafeBytes { fuzzClient.feed($0) }
            var parser = NBDReplyParser(structuredReplies: random.below(2) == 0, contextIDs: [1, 2])
            try? parser.expect(NBDRequest(command: .read, cookie: 1, offset: 0, length: 4096))
            try? parser.expect(NBDRequest(command: .blockStatus, cookie: 2, offset: 0, length: 4096))
            _ = try? parser.feed((0..<random.below(200)).map { _ in UInt8(truncatingIfNeeded: random.next() % 8 == 0 ? random.next() : 0) })
            var header = [UInt8](repeating: 0, count: 28)
            for i in 0..<28 { header[i] = UInt8(truncatingIfNeeded: random.next()) }
            header[0...3] = [0x25, 0x60, 0x95, 0x13]
            if let request = header.withUnsafeBytes({ try? NBDRequest.parse($0) }) {
                _ = request.validate(for: NBDSessionFixture.session(exports.exports[random.below(2)], structured: true, contexts: [.baseAllocation]))
            }
        }
    }

    static let fuzzRounds = 2000
}

enum NBDSessionFixture {
    static func session(_ export: NBDExport, structured: Bool, contexts: [NBDMetaContext]) -> NBDNegotiatedSession {
        NBDNegotiatedSession(
            export: export, transmissionFlags: export.transmissionFlags(structuredReplies: structured), structuredReplies: structured,
            metaContexts: contexts, blockSizeAcknowledged: true, viaExportName: false)
    }
}
