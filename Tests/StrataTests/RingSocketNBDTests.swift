import Foundation
import Glibc
import StrataNBD
import StrataRuntime
import Testing

/// Sends an array through the ring. The bytes are copied first: an array's storage may not be
/// borrowed across the suspension that waits for the send.
private func sendBytes(_ socket: RingSocket, _ bytes: [UInt8]) async throws(SystemError) {
    guard !bytes.isEmpty else { return }
    let copy = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 16)
    defer { copy.deallocate() }
    bytes.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    try await socket.sendAll(from: copy, count: bytes.count)
}

private struct ServedHandshake: Sendable {
    var session: NBDNegotiatedSession
    /// The client ended with NBD_CMD_DISC rather than just hanging up.
    var sawDisconnect: Bool
}

/// The reply to one transmission request of an export that reads as zeros and refuses the rest:
/// nbdinfo reads the first sectors to guess the content.
private func reply(to request: NBDRequest, session: NBDNegotiatedSession) -> [UInt8] {
    let inBounds = request.offset <= session.export.sizeBytes && UInt64(request.length) <= session.export.sizeBytes - request.offset
    guard request.command == .read, request.length > 0, inBounds else {
        var bytes = [UInt8](repeating: 0, count: NBDReplyEncoder.simpleReplyBytes)
        bytes.withUnsafeMutableBytes { _ = NBDReplyEncoder.simpleReply(cookie: request.cookie, error: .invalid, into: $0) }
        return bytes
    }
    if session.structuredReplies {
        var bytes = [UInt8](repeating: 0, count: NBDReplyEncoder.offsetHoleBytes)
        bytes.withUnsafeMutableBytes {
            _ = NBDReplyEncoder.offsetHole(cookie: request.cookie, offset: request.offset, holeLength: request.length, done: true, into: $0)
        }
        return bytes
    }
    var bytes = [UInt8](repeating: 0, count: NBDReplyEncoder.simpleReplyBytes + Int(request.length))
    bytes.withUnsafeMutableBytes { _ = NBDReplyEncoder.simpleReply(cookie: request.cookie, error: nil, into: $0) }
    return bytes
}

/// Accepts one connection and drives `NBDServerHandshake` with ring receives and sends until it
/// reports the negotiated export or ends; in transmission only NBD_CMD_DISC is expected (it closes
/// the connection), reads inside the export see zeros, anything else is refused with EINVAL.
/// Returns the negotiated session, if any.
private func serveNBDHandshake(_ listener: RingListener, catalog: NBDExportList) async throws(SystemError) -> ServedHandshake? {
    let socket = try await listener.accept()
    let capacity = 64 << 10
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    defer { buffer.deallocate() }
    do throws(SystemError) {
        var server = NBDServerHandshake(catalog: catalog)
        var session: NBDNegotiatedSession?
        var leftover: [UInt8] = []
        var sawDisconnect = false
        handshake: while true {
            try await sendBytes(socket, server.takeOutbound())
            let received = try await socket.receive(into: buffer, count: capacity)
            if received == 0 { break }
            let (consumed, events) = server.feed(UnsafeRawBufferPointer(start: buffer, count: received))
            try await sendBytes(socket, server.takeOutbound())
            for event in events {
                switch event {
                case .transmission(let negotiated):
                    session = negotiated
                    leftover = Array(UnsafeRawBufferPointer(start: buffer + consumed, count: received - consumed))
                    break handshake
                case .aborted, .disconnect:
                    break handshake
                default:
                    continue
                }
            }
        }
        // The export is read-only, so no request carries a payload that would need draining.
        while let session {
            // The request header: whatever followed the handshake in its last read, then the ring.
            let fromLeftover = min(leftover.count, NBDRequest.headerBytes)
            if fromLeftover > 0 {
                leftover.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: fromLeftover) }
                leftover.removeFirst(fromLeftover)
            }
            var have = fromLeftover
            if have == 0 {
                // Only a header cut in half is an error: a client hanging up between requests
                // ends the connection as finally as NBD_CMD_DISC does.
                have = try await socket.receive(into: buffer, count: NBDRequest.headerBytes)
                if have == 0 { break }
            }
            try await socket.receiveExactly(into: buffer + have, count: NBDRequest.headerBytes - have)
            guard let request = try? NBDRequest.parse(UnsafeRawBufferPointer(start: buffer, count: NBDRequest.headerBytes)) else { break }
            if request.command == .disconnect {
                sawDisconnect = true
                break
            }
            try await sendBytes(socket, reply(to: request, session: session))
        }
        try await socket.close()
        return session.map { ServedHandshake(session: $0, sawDisconnect: sawDisconnect) }
    } catch {
        try? await socket.close()
        throw error
    }
}

@Suite(.timeLimit(.minutes(1)))
struct RingSocketNBDTests {
    /// nbdinfo negotiates with the handshake codec served through a queue executor's ring and
    /// reports the export's size and flags as the catalog describes them.
    @Test func nbdinfoNegotiatesThroughTheRing() async throws {
        let nbdinfoPath = "/usr/bin/nbdinfo"
        try #require(FileManager.default.isExecutableFile(atPath: nbdinfoPath), "nbdinfo is missing: scripts/install-deps installs it (libnbd-bin)")
        let executor = try QueueExecutor(name: "ring-nbd")
        let path = "/tmp/strata-ring-nbd-\(getpid()).sock"
        unlink(path)
        let listener = try RingListener.unix(path: path)
        defer { listener.close() }
        // Read-only, so the handshake must drop TRIM from the advertised capabilities.
        let catalog = NBDExportList([
            NBDExport(name: "", description: "ring export", sizeBytes: 5 << 20, isReadOnly: true,
                      capabilities: [.sendFlush, .sendTrim], canMultiConn: true),
        ])
        let server = Task(executorPreference: executor) { () throws(SystemError) -> ServedHandshake? in
            try await serveNBDHandshake(listener, catalog: catalog)
        }
        let nbdinfo = Process()
        nbdinfo.executableURL = URL(fileURLWithPath: nbdinfoPath)
        nbdinfo.arguments = ["--json", "nbd+unix:///?socket=\(path)"]
        let output = Pipe()
        nbdinfo.standardOutput = output
        try nbdinfo.run()
        let served = try await server.value
        // Read nbdinfo's output before waiting, so a full pipe cannot stall it.
        let data = output.fileHandleForReading.readDataToEndOfFile()
        nbdinfo.waitUntilExit()
        #expect(nbdinfo.terminationStatus == 0)
        #expect(served?.session.export.sizeBytes == 5 << 20)
        #expect(served?.sawDisconnect == true)

        let json = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        let export = (json?["exports"] as? [[String: Any]])?.first
        #expect(json?["protocol"] as? String == "newstyle-fixed")
        #expect(export?["export-size"] as? Int == 5 << 20)
        #expect(export?["description"] as? String == "ring export")
        #expect(export?["is_read_only"] as? Bool == true)
        #expect(export?["can_multi_conn"] as? Bool == true)
        #expect(export?["can_flush"] as? Bool == true)
        #expect(export?["can_trim"] as? Bool == false)
        await executor.shutdown()
    }
}
