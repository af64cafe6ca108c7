import Foundation
import Glibc
import Testing

/// A hand-rolled NBD client on a blocking socket: it says exactly the bytes a test wants.
private struct RawNBDClient {
    let fd: Int32
    static let optionMagic: UInt64 = 0x4948_4156_454F_5054
    static let replyMagic: UInt64 = 0x0003_e889_0455_65a9

    init?(_ server: NBDServerProcess) {
        guard case .unix(let path) = server.endpoints[0], let fd = NBDSocket.connectUnix(path) else { return nil }
        self.fd = fd
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() { _ = Glibc.close(fd) }

    static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
    static func load(_ bytes: [UInt8], _ at: Int, _ count: Int) -> UInt64 { bytes[at..<at + count].reduce(0) { $0 << 8 | UInt64($1) } }

    func send(_ bytes: [UInt8]) -> Bool { NBDSocket.sendAll(fd, bytes) }
    func receive(_ count: Int) -> [UInt8]? { NBDSocket.receiveExactly(fd, count, timeout: 10) }

    /// Greeting: NBDMAGIC, IHAVEOPT, handshake flags (FIXED_NEWSTYLE required).
    func greeting() -> Bool {
        guard let bytes = receive(18) else { return false }
        return Self.load(bytes, 0, 8) == 0x4e42_444d_4147_4943 && Self.load(bytes, 8, 8) == Self.optionMagic && bytes[17] & 1 == 1
    }

    func option(_ option: UInt32, _ data: [UInt8]) -> Bool {
        send(Self.be(Self.optionMagic) + Self.be(option) + Self.be(UInt32(data.count)) + data)
    }

    /// One option reply: (option, type, data).
    func optionReply() -> (option: UInt32, type: UInt32, data: [UInt8])? {
        guard let header = receive(20), Self.load(header, 0, 8) == Self.replyMagic else { return nil }
        let length = Int(Self.load(header, 16, 4))
        guard let data = length == 0 ? [] : receive(length) else { return nil }
        return (UInt32(Self.load(header, 8, 4)), UInt32(Self.load(header, 12, 4)), data)
    }

    /// NBD_OPT_GO for `name`; returns the export size from INFO_EXPORT on ACK.
    func go(_ name: String) -> UInt64? {
        guard option(7, Self.be(UInt32(name.utf8.count)) + Array(name.utf8) + Self.be(UInt16(0))) else { return nil }
        var size: UInt64?
        while let reply = optionReply() {
            if reply.type == 3, reply.data.count >= 12, Self.load(reply.data, 0, 2) == 0 { size = Self.load(reply.data, 2, 8) }
            if reply.type == 1 { return size }
            if reply.type & 0x8000_0000 != 0 { return nil }
        }
        return nil
    }

    /// Greeting, client flags FIXED_NEWSTYLE|NO_ZEROES, GO: the export size (no structured replies: simple replies only).
    func negotiate(_ name: String) -> UInt64? {
        guard greeting(), send(Self.be(UInt32(3))) else { return nil }
        return go(name)
    }

    func request(_ type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32, payload: [UInt8] = []) -> Bool {
        send(Self.be(UInt32(0x2560_9513)) + Self.be(flags) + Self.be(type) + Self.be(cookie) + Self.be(offset) + Self.be(length) + payload)
    }

    /// A simple reply: (error, cookie), then `dataBytes` of read data when the error is 0.
    func simpleReply(dataBytes: Int = 0) -> (error: UInt32, cookie: UInt64, data: [UInt8])? {
        guard let header = receive(16), Self.load(header, 0, 4) == 0x6744_6698 else { return nil }
        let error = UInt32(Self.load(header, 4, 4))
        let data = error == 0 && dataBytes > 0 ? receive(dataBytes) : []
        guard let data else { return nil }
        return (error, Self.load(header, 8, 8), data)
    }
}

/// `strata serve` against clients that misbehave: every bad input gets the spec's answer (an
/// error reply, ERR_UNSUP, or a closed connection), and the server keeps serving fresh clients
/// with its fd count back at the baseline and its RSS flat.
@Suite(.serialized, .timeLimit(.minutes(2))) struct NBDHostileClientTests {
    static let size: UInt64 = 16 << 20

    private func withServer(_ name: String, _ body: (NBDServerProcess) async throws -> Void) async throws {
        let scratch = try ScratchDirectory("nbd-hostile-\(name)")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "16M"])
        try await QemuTool.require("qemu-io", ["-f", "raw", "-c", "write -P 0x5c 0 1M", image])
        let server = try NBDTestServer.start([.init(name: "disk", image: image, writable: true)], on: .unix(scratch.path("s.sock")), scratch: scratch)
        try await body(server)
        let stopped = server.stop()
        #expect(stopped.inTime && stopped.status == 0, "exit \(stopped.status): \(server.log.suffix(2000))")
    }

    /// A fresh client negotiates, reads the pattern back, writes, and leaves with NBD_CMD_DISC.
    private func expectServesFreshClient(_ server: NBDServerProcess, _ label: String) {
        guard let client = RawNBDClient(server) else { Issue.record("\(label): cannot connect"); return }
        defer { client.close() }
        #expect(client.negotiate("disk") == Self.size, "\(label): handshake")
        #expect(client.request(0, cookie: 77, offset: 4096, length: 4096))
        let reply = client.simpleReply(dataBytes: 4096)
        #expect(reply?.error == 0 && reply?.cookie == 77 && reply?.data == [UInt8](repeating: 0x5c, count: 4096), "\(label): read")
        _ = client.request(2, cookie: 78, offset: 0, length: 0)
    }

    @Test func unknownOptionsGetErrUnsupAndTheHandshakeGoesOn() async throws {
        try await withServer("options") { server in
            let client = try #require(RawNBDClient(server))
            defer { client.close() }
            #expect(client.greeting() && client.send(RawNBDClient.be(UInt32(3))))
            for option: UInt32 in [0x7777, 0x1234_5678, 100] {
                #expect(client.option(option, [1, 2, 3, 4, 5]))
                let reply = client.optionReply()
                #expect(reply?.option == option && reply?.type == 0x8000_0001, "option \(option): \(String(describing: reply))")
            }
            // STARTTLS without TLS configured: a policy refusal (or UNSUP), never a hang-up.
            #expect(client.option(5, []))
            let tls = client.optionReply()
            #expect(tls?.type == 0x8000_0002 || tls?.type == 0x8000_0001, "\(String(describing: tls))")
            #expect(client.go("disk") == Self.size)
            #expect(client.request(0, cookie: 1, offset: 0, length: 512))
            #expect(client.simpleReply(dataBytes: 512)?.data == [UInt8](repeating: 0x5c, count: 512))
        }
    }

    @Test func wrongMagicsAndTruncatedHandshakesAreDropped() async throws {
        try await withServer("magic") { server in
            // Wrong option magic: disconnect.
            var client = try #require(RawNBDClient(server))
            #expect(client.greeting() && client.send(RawNBDClient.be(UInt32(3))))
            #expect(client.send(RawNBDClient.be(UInt64(0x1122_3344_5566_7788)) + RawNBDClient.be(UInt32(7)) + RawNBDClient.be(UInt32(0))))
            #expect(NBDSocket.closedByPeer(client.fd), "wrong option magic")
            client.close()
            // Unknown client flags: disconnect.
            client = try #require(RawNBDClient(server))
            #expect(client.greeting() && client.send(RawNBDClient.be(UInt32(0x8000_0003))))
            #expect(NBDSocket.closedByPeer(client.fd), "unknown client flags")
            client.close()
            // Wrong request magic in transmission: disconnect.
            client = try #require(RawNBDClient(server))
            #expect(client.negotiate("disk") == Self.size)
            #expect(client.send([UInt8](repeating: 0xAB, count: 28)))
            #expect(NBDSocket.closedByPeer(client.fd), "wrong request magic")
            client.close()
            // Truncated: half a greeting reply, half an option header, half a request header.
            for cut in [2, 9, 30] {
                client = try #require(RawNBDClient(server))
                _ = client.greeting()
                var bytes = RawNBDClient.be(UInt32(3)) + RawNBDClient.be(RawNBDClient.optionMagic) + RawNBDClient.be(UInt32(7)) + RawNBDClient.be(UInt32(100))
                bytes = Array(bytes.prefix(cut))
                _ = client.send(bytes)
                client.close()
            }
            client = try #require(RawNBDClient(server))
            _ = client.negotiate("disk")
            _ = client.send(Array(RawNBDClient.be(UInt32(0x2560_9513)) + [0, 0, 0]))
            client.close()
            // An unknown export name on GO: an error reply, not a dropped connection.
            client = try #require(RawNBDClient(server))
            #expect(client.greeting() && client.send(RawNBDClient.be(UInt32(3))))
            #expect(client.option(7, RawNBDClient.be(UInt32(5)) + Array("ghost".utf8) + RawNBDClient.be(UInt16(0))))
            let reply = client.optionReply()
            #expect(reply.map { $0.type & 0x8000_0000 != 0 } == true, "GO for an unknown export: \(String(describing: reply))")
            client.close()
            expectServesFreshClient(server, "after bad handshakes")
        }
    }

    @Test func badRequestsGetErrorsAndTheConnectionGoesOn() async throws {
        try await withServer("requests") { server in
            let client = try #require(RawNBDClient(server))
            defer { client.close() }
            #expect(client.negotiate("disk") == Self.size)
            // Unknown command: EINVAL.
            #expect(client.request(0x55, cookie: 1, offset: 0, length: 512))
            var reply = client.simpleReply()
            #expect(reply?.error == 22 && reply?.cookie == 1, "unknown command: \(String(describing: reply))")
            // Unknown flag bits: EINVAL.
            #expect(client.request(0, flags: 0x4000, cookie: 2, offset: 0, length: 512))
            reply = client.simpleReply(dataBytes: 512)
            #expect(reply?.error == 22 && reply?.cookie == 2, "unknown flags: \(String(describing: reply))")
            // Oversized read (64 MiB): EINVAL (or EOVERFLOW).
            #expect(client.request(0, cookie: 3, offset: 0, length: 64 << 20))
            reply = client.simpleReply()
            #expect((reply?.error == 22 || reply?.error == 75) && reply?.cookie == 3, "oversized read: \(String(describing: reply))")
            // Past the end: read EINVAL, write ENOSPC (its payload drained), offsets near 2^64 too.
            #expect(client.request(0, cookie: 4, offset: Self.size, length: 512))
            reply = client.simpleReply()
            #expect(reply?.error == 22 && reply?.cookie == 4, "read past end: \(String(describing: reply))")
            #expect(client.request(1, cookie: 5, offset: Self.size - 256, length: 512, payload: [UInt8](repeating: 1, count: 512)))
            reply = client.simpleReply()
            #expect(reply?.error == 28 && reply?.cookie == 5, "write past end: \(String(describing: reply))")
            #expect(client.request(0, cookie: 6, offset: UInt64.max - 100, length: 512))
            reply = client.simpleReply()
            #expect(reply?.error == 22 && reply?.cookie == 6, "read at 2^64-101: \(String(describing: reply))")
            // Still in step: a good read after all of it.
            #expect(client.request(0, cookie: 7, offset: 0, length: 4096))
            reply = client.simpleReply(dataBytes: 4096)
            #expect(reply?.error == 0 && reply?.cookie == 7 && reply?.data == [UInt8](repeating: 0x5c, count: 4096), "good read after bad ones")
        }
    }

    @Test func oversizedWritesAndVanishingClientsAreDropped() async throws {
        try await withServer("vanish") { server in
            // A WRITE announcing ~2 GiB: too big to drain, the server hangs up.
            var client = try #require(RawNBDClient(server))
            #expect(client.negotiate("disk") == Self.size)
            #expect(client.request(1, cookie: 1, offset: 0, length: 0x7FFF_0000, payload: [UInt8](repeating: 9, count: 4096)))
            #expect(NBDSocket.closedByPeer(client.fd), "oversized write")
            client.close()
            // Half a write payload, then gone; then a header alone, then gone.
            for sent in [0, 1000, 65535] {
                client = try #require(RawNBDClient(server))
                #expect(client.negotiate("disk") == Self.size)
                #expect(client.request(1, cookie: 2, offset: 1 << 20, length: 65536, payload: [UInt8](repeating: 7, count: sent)))
                client.close()
            }
            expectServesFreshClient(server, "after vanishing writers")
        }
    }

    /// 2000 connections opened and dropped (every fifth mid-handshake, every seventh after GO):
    /// the server serves a fresh client, its fd count returns to the baseline, RSS stays within +32 MiB.
    @Test func twoThousandDroppedConnectionsLeaveNoTrace() async throws {
        try await withServer("churn") { server in
            expectServesFreshClient(server, "baseline")
            // The fresh client's connection closes asynchronously in the server: the baseline is
            // the count once it stops changing.
            var fdBaseline = server.openFDCount
            for _ in 0..<200 {
                try await Task.sleep(for: .milliseconds(10))
                let now = server.openFDCount
                if now == fdBaseline { break }
                fdBaseline = now
            }
            let rssBaseline = server.rssKiB
            for index in 0..<2000 {
                guard let client = RawNBDClient(server) else { Issue.record("connection \(index) refused"); break }
                if index % 5 == 0 {
                    _ = client.greeting()
                    _ = client.send(RawNBDClient.be(UInt32(3)) + RawNBDClient.be(RawNBDClient.optionMagic))
                } else if index % 7 == 0 {
                    _ = client.negotiate("disk")
                }
                client.close()
            }
            expectServesFreshClient(server, "after 2000 connections")
            var fds = server.openFDCount
            for _ in 0..<100 where fds != fdBaseline {
                try await Task.sleep(for: .milliseconds(50))
                fds = server.openFDCount
            }
            #expect(fds == fdBaseline, "open fds: \(fdBaseline) before, \(fds) after")
            let rss = server.rssKiB
            #expect(rss - rssBaseline < 32 << 10, "RSS \(rssBaseline) KiB before, \(rss) KiB after")
        }
    }
}
