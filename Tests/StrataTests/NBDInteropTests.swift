import Foundation
import Glibc
import StrataNBD
import Testing

/// Blocking Unix-socket plumbing for driving the codec against real NBD tools.
private enum UnixSocket {
    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        return address
    }

    static func connect(_ path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result != 0 { close(fd); return nil }
        return fd
    }

    static func listen(_ path: String) -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        _ = Glibc.listen(fd, 1)
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    static func receive(_ fd: Int32, max: Int = 65536) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n > 0 ? Array(buffer[0..<n]) : []
    }

    static func receiveExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes: [UInt8] = []
        while bytes.count < count {
            let chunk = receive(fd, max: count - bytes.count)
            if chunk.isEmpty { return nil }
            bytes += chunk
        }
        return bytes
    }
}

private func installed(_ tool: String) -> Bool {
    ["/usr/bin", "/usr/local/bin", "/usr/sbin"].contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
}

private func temporarySocketPath(_ name: String) -> String {
    "\(NSTemporaryDirectory())strata-nbd-\(name)-\(getpid()).sock"
}

@Suite(.serialized) struct NBDInteropTests {
    /// The codec's client against nbdkit's memory plugin: handshake, write, read back, block status.
    @Test func clientCodecAgainstNbdkit() throws {
        try #require(installed("nbdkit"), "nbdkit is missing: scripts/install-deps installs it")
        let path = temporarySocketPath("nbdkit")
        unlink(path)
        let nbdkit = Process()
        nbdkit.executableURL = URL(fileURLWithPath: "/usr/bin/nbdkit")
        nbdkit.arguments = ["-f", "-U", path, "memory", "1M"]
        try nbdkit.run()
        // SIGKILL: nbdkit started by Foundation's Process does not always act on SIGTERM here.
        defer { kill(nbdkit.processIdentifier, SIGKILL); nbdkit.waitUntilExit(); unlink(path) }
        var fd: Int32?
        for _ in 0..<200 where fd == nil {
            fd = UnixSocket.connect(path)
            if fd == nil { usleep(20_000) }
        }
        guard let fd else { Issue.record("nbdkit did not listen on \(path)"); return }
        defer { close(fd) }

        var client = NBDClientHandshake(exportName: "")
        while client.state == .negotiating {
            UnixSocket.send(fd, client.takeOutbound())
            if client.state != .negotiating { break }
            let bytes = UnixSocket.receive(fd)
            guard !bytes.isEmpty else { break }
            #expect(client.feed(bytes).isEmpty)
            UnixSocket.send(fd, client.takeOutbound())
        }
        guard case .connected(let result) = client.state else { Issue.record("handshake: \(client.state)"); return }
        #expect(result.sizeBytes == 1 << 20 && result.structuredReplies)
        #expect(result.metaContexts.map(\.name) == ["base:allocation"])

        var parser = NBDReplyParser(structuredReplies: true, contextIDs: Set(result.metaContexts.map(\.id)))
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        var header = [UInt8](repeating: 0, count: NBDRequest.headerBytes)
        func submit(_ request: NBDRequest, payload: [UInt8] = []) throws {
            try parser.expect(request)
            _ = header.withUnsafeMutableBytes { request.encode(into: $0) }
            UnixSocket.send(fd, header + payload)
        }
        func collect(_ cookie: UInt64) throws -> [NBDReplyEvent] {
            var events: [NBDReplyEvent] = []
            while !events.contains(where: { if case .completed(cookie, _) = $0 { true } else { false } }) {
                let bytes = UnixSocket.receive(fd)
                if bytes.isEmpty { throw NBDProtocolError("nbdkit closed the connection") }
                events += try parser.feed(bytes)
            }
            return events
        }
        try submit(NBDRequest(command: .write, flags: .fua, cookie: 1, offset: 8192, length: 4096), payload: pattern)
        #expect(try collect(1).last == .completed(cookie: 1, error: nil))

        try submit(NBDRequest(command: .read, cookie: 2, offset: 4096, length: 12288))
        var image = [UInt8](repeating: 0xEE, count: 12288)
        for event in try collect(2) {
            switch event {
            case .data(_, let offset, let bytes): image.replaceSubrange(Int(offset - 4096)..<Int(offset - 4096) + bytes.count, with: bytes)
            case .hole(_, let offset, let length): image.replaceSubrange(Int(offset - 4096)..<Int(offset - 4096) + Int(length), with: repeatElement(0, count: Int(length)))
            case .completed(_, let error): #expect(error == nil)
            default: Issue.record("unexpected \(event)")
            }
        }
        #expect(image == [UInt8](repeating: 0, count: 4096) + pattern + [UInt8](repeating: 0, count: 4096))

        try submit(NBDRequest(command: .blockStatus, cookie: 3, offset: 0, length: 1 << 20))
        let status = try collect(3).compactMap { event -> [NBDBlockDescriptor]? in
            if case .blockStatus(_, _, let descriptors) = event { return descriptors } else { return nil }
        }
        #expect(status.count == 1)
        // The memory plugin reports the written page as data and the rest as holes.
        var offset: UInt64 = 0
        for descriptor in status.first ?? [] {
            let written = offset < 12288 && offset + UInt64(descriptor.length) > 8192
            #expect((descriptor.flags & NBDMetaContext.stateHole == 0) == written)
            offset += UInt64(descriptor.length)
        }
        #expect(offset >= 1 << 20 || status.first?.count == 1)

        // A read past the end is the server's EINVAL, reported as an error, not a broken stream.
        try submit(NBDRequest(command: .read, cookie: 4, offset: 1 << 20, length: 512))
        #expect(try collect(4).last == .completed(cookie: 4, error: .invalid))
        _ = header.withUnsafeMutableBytes { NBDRequest(command: .disconnect, cookie: 5, offset: 0, length: 0).encode(into: $0) }
        UnixSocket.send(fd, header)
    }

    /// nbdinfo handshakes with the codec's server state machine behind a blocking socket loop.
    @Test func nbdinfoAgainstServerCodec() throws {
        try #require(installed("nbdinfo"), "nbdinfo is missing: scripts/install-deps installs it (libnbd-bin)")
        let path = temporarySocketPath("server")
        let listener = UnixSocket.listen(path)
        defer { close(listener); unlink(path) }
        let catalog = NBDExportList([
            NBDExport(name: "disk", description: "strata test", sizeBytes: 3 << 20,
                      blockSize: NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximumPayload: 1 << 20), canMultiConn: true),
        ])
        let nbdinfo = Process()
        nbdinfo.executableURL = URL(fileURLWithPath: "/usr/bin/nbdinfo")
        nbdinfo.arguments = ["--json", "nbd+unix:///disk?socket=\(path)"]
        let output = Pipe()
        nbdinfo.standardOutput = output
        try nbdinfo.run()

        let fd = accept(listener, nil, nil)
        #expect(fd >= 0)
        var server = NBDServerHandshake(catalog: catalog)
        var leftover: [UInt8] = []
        var session: NBDNegotiatedSession?
        handshake: while true {
            UnixSocket.send(fd, server.takeOutbound())
            let bytes = UnixSocket.receive(fd)
            if bytes.isEmpty { break }
            let (rest, events) = server.feed(bytes)
            UnixSocket.send(fd, server.takeOutbound())
            for event in events {
                switch event {
                case .transmission(let negotiated): session = negotiated; leftover = rest; break handshake
                case .aborted, .disconnect: break handshake
                default: continue
                }
            }
        }
        // Transmission: only NBD_CMD_DISC is expected; anything else gets EINVAL.
        while session != nil {
            if leftover.count < NBDRequest.headerBytes {
                guard let more = UnixSocket.receiveExactly(fd, NBDRequest.headerBytes - leftover.count) else { break }
                leftover += more
            }
            guard let request = leftover.withUnsafeBytes({ try? NBDRequest.parse($0) }) else { break }
            leftover.removeFirst(NBDRequest.headerBytes)
            if request.command == .disconnect { break }
            var reply = [UInt8](repeating: 0, count: NBDReplyEncoder.simpleReplyBytes)
            _ = reply.withUnsafeMutableBytes { NBDReplyEncoder.simpleReply(cookie: request.cookie, error: .invalid, into: $0) }
            UnixSocket.send(fd, reply)
        }
        close(fd)
        nbdinfo.waitUntilExit()
        #expect(nbdinfo.terminationStatus == 0)
        let json = try JSONSerialization.jsonObject(with: output.fileHandleForReading.readDataToEndOfFile()) as? [String: Any]
        let export = (json?["exports"] as? [[String: Any]])?.first
        #expect(export?["export-size"] as? Int == 3 << 20)
        #expect(export?["can_multi_conn"] as? Bool == true)
        #expect(export?["is_read_only"] as? Bool == false)
        #expect(export?["block_size_minimum"] as? Int == 512)
        #expect(export?["block_size_maximum"] as? Int == 1 << 20)
        #expect(export?["description"] as? String == "strata test")
        #expect(json?["protocol"] as? String == "newstyle-fixed")
    }
}
