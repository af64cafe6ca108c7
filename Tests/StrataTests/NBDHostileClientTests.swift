import Foundation
import Glibc
import Testing

/// Clients that break the protocol, vanish or flood: each gets the protocol's error or is
/// disconnected, the server keeps serving everyone else, and its descriptors and memory stay flat.
@Suite(.serialized) struct NBDHostileClientTests {
    let scratch: ScratchDirectory

    init() throws { scratch = try ScratchDirectory("nbd-hostile") }

    static let optionMagic: UInt64 = 0x4948_4156_454F_5054
    static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    static let requestMagic: UInt32 = 0x2560_9513

    /// A blocking Unix socket with a 10 s receive timeout, so a test fails instead of hanging.
    final class Client {
        let fd: Int32

        init(path: String) throws {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, byte) in path.utf8.enumerated() { raw[i] = byte } }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard result == 0 else { close(fd); throw ServeFailure("connect \(path): errno \(errno)") }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }

        deinit { close(fd) }

        func send(_ bytes: [UInt8]) {
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }

        /// Exactly `count` bytes, or nil when the server closed (or the timeout passed) first.
        func receive(_ count: Int) -> [UInt8]? {
            var bytes = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
                if got <= 0 { return nil }
                done += got
            }
            return bytes
        }

        /// True when the server hung up (EOF, or a reset) rather than leaving the socket open.
        func sawHangUp() -> Bool {
            var byte: UInt8 = 0
            return recv(fd, &byte, 1, 0) <= 0 && errno != EAGAIN
        }

        /// Reads the greeting and sends client flags FIXED_NEWSTYLE | NO_ZEROES.
        func greet() throws {
            let greeting = try #require(receive(18))
            #expect(Array(greeting[0..<8]) == Array("NBDMAGIC".utf8))
            send(be32(3))
        }

        func option(_ option: UInt32, _ data: [UInt8] = []) {
            send(be64(NBDHostileClientTests.optionMagic) + be32(option) + be32(UInt32(data.count)) + data)
        }

        /// One option reply: (option, type, data).
        func optionReply() throws -> (UInt32, UInt32, [UInt8]) {
            let header = try #require(receive(20))
            #expect(load64(header, 0) == NBDHostileClientTests.optionReplyMagic)
            let length = Int(load32(header, 16))
            return (load32(header, 8), load32(header, 12), length > 0 ? try #require(receive(length)) : [])
        }

        /// Ends the handshake with EXPORT_NAME ""; returns the export size.
        func enterTransmission() throws -> UInt64 {
            option(1)
            let reply = try #require(receive(10))
            return load64(reply, 0)
        }

        func request(type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32) {
            send(be32(NBDHostileClientTests.requestMagic) + be16(flags) + be16(type) + be64(cookie) + be64(offset) + be32(length))
        }

        /// A simple reply: (error, cookie).
        func simpleReply() throws -> (UInt32, UInt64) {
            let reply = try #require(receive(16))
            #expect(load32(reply, 0) == 0x6744_6698)
            return (load32(reply, 4), load64(reply, 8))
        }
    }

    func startServer(_ extra: [String] = []) async throws -> (StrataServeProcess, String) {
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "raw", image, "16M"])
        let socket = scratch.path("hostile.sock")
        let server = try await StrataServeProcess.start(["--image", image, "--format", "raw", "--nbd", "unix:\(socket)"] + extra, in: scratch)
        return (server, socket)
    }

    /// A well-behaved client still gets its data.
    func expectServing(_ server: StrataServeProcess) async throws {
        try await QemuTool.require("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 4k 4k", "-c", "read -P 0x3c 4k 4k", server.uri()])
    }

    @Test func brokenHandshakesAreRefusedOrDisconnected() async throws {
        let (server, socket) = try await startServer()
        // Unknown client flags: disconnect.
        do {
            let client = try Client(path: socket)
            _ = try #require(client.receive(18))
            client.send(be32(0xffff_fff0))
            #expect(client.sawHangUp())
        }
        // Wrong option magic: disconnect.
        do {
            let client = try Client(path: socket)
            try client.greet()
            client.send(be64(0x1122_3344_5566_7788) + be32(7) + be32(0))
            #expect(client.sawHangUp())
        }
        // Truncated option, then the client goes away.
        do {
            let client = try Client(path: socket)
            try client.greet()
            client.send(Array(be64(NBDHostileClientTests.optionMagic).prefix(5)))
        }
        // Unknown option: ERR_UNSUP and the handshake goes on; a huge option is refused
        // (ERR_TOO_BIG) without being buffered; then EXPORT_NAME reaches transmission.
        do {
            let client = try Client(path: socket)
            try client.greet()
            client.option(0xdead, [1, 2, 3])
            let (option, type, _) = try client.optionReply()
            #expect(option == 0xdead && type == 0x8000_0001)
            client.option(6, [UInt8](repeating: 0x41, count: 100_000))  // NBD_OPT_INFO with a 100 kB body
            let (_, bigType, _) = try client.optionReply()
            #expect(bigType & 0x8000_0000 != 0, "an oversized option must be refused, got \(bigType)")
            #expect(try client.enterTransmission() == 16 << 20)
        }
        try await expectServing(server)
        try await server.expectCleanStop()
    }

    @Test func badRequestsGetErrorsOrADisconnectAndOthersKeepGoing() async throws {
        let (server, socket) = try await startServer()
        let client = try Client(path: socket)
        try client.greet()
        _ = try client.enterTransmission()
        // Unknown command: EINVAL, connection continues.
        client.request(type: 99, cookie: 1, offset: 0, length: 512)
        #expect(try client.simpleReply() == (UInt32(EINVAL), 1))
        // Read past the end: EINVAL; a read over the 32 MiB maximum: EINVAL.
        client.request(type: 0, cookie: 2, offset: 16 << 20, length: 512)
        #expect(try client.simpleReply() == (UInt32(EINVAL), 2))
        client.request(type: 0, cookie: 3, offset: 0, length: 64 << 20)
        #expect(try client.simpleReply() == (UInt32(EINVAL), 3))
        // Write past the end: ENOSPC, after the payload was read and dropped.
        client.request(type: 1, cookie: 4, offset: (16 << 20) - 100, length: 4096)
        client.send([UInt8](repeating: 0xab, count: 4096))
        #expect(try client.simpleReply() == (UInt32(ENOSPC), 4))
        // Still in step: a good read.
        client.request(type: 0, cookie: 5, offset: 0, length: 512)
        #expect(try client.simpleReply() == (0, 5))
        #expect(client.receive(512) == [UInt8](repeating: 0, count: 512))
        // Wrong request magic: the stream is out of step, so the server hangs up.
        client.send([UInt8](repeating: 0x55, count: 28))
        #expect(client.sawHangUp())

        // A write too large to drain (64 MiB): disconnect.
        let huge = try Client(path: socket)
        try huge.greet()
        _ = try huge.enterTransmission()
        huge.request(type: 1, cookie: 9, offset: 0, length: 64 << 20)
        #expect(huge.sawHangUp())

        // A client that vanishes halfway through a write's payload: nothing of it lands.
        do {
            let vanishing = try Client(path: socket)
            try vanishing.greet()
            _ = try vanishing.enterTransmission()
            vanishing.request(type: 1, cookie: 10, offset: 1 << 20, length: 65536)
            vanishing.send([UInt8](repeating: 0x99, count: 30000))
        }
        try await expectServing(server)
        #expect(try await QemuTool.io("read -P 0 1M 64k", server.uri()))
        try await server.expectCleanStop()
    }

    @Test func thousandsOfDroppedConnectionsLeaveDescriptorsAndMemoryFlat() async throws {
        let (server, socket) = try await startServer(["--handshake-limit", "2"])
        try await expectServing(server)
        let descriptors = server.openDescriptors()
        let resident = server.residentKiB()
        for round in 0..<2000 {
            let client = try Client(path: socket)
            switch round % 4 {
            case 0: break  // connect and leave
            case 1: _ = client.receive(18)  // read the greeting, leave
            case 2:
                try client.greet()
                client.option(0xbeef, [UInt8](repeating: 1, count: 64))
            default:
                try client.greet()
                _ = try client.enterTransmission()
                client.request(type: 0, cookie: UInt64(round), offset: 0, length: 4096)
            }
        }
        // A client that connects and says nothing is cut off after the handshake limit.
        let silent = try Client(path: socket)
        _ = silent.receive(18)
        let started = Date()
        #expect(silent.sawHangUp())
        #expect(Date().timeIntervalSince(started) < 6, "the handshake limit did not cut the silent client off")

        try await expectServing(server)
        var settled = server.openDescriptors()
        for _ in 0..<100 where settled != descriptors {
            try await Task.sleep(nanoseconds: 50_000_000)
            settled = server.openDescriptors()
        }
        #expect(settled == descriptors, "descriptors: \(descriptors) before, \(settled) after")
        #expect(server.residentKiB() - resident < 32 << 10, "RSS grew from \(resident) KiB to \(server.residentKiB()) KiB")
        try await server.expectCleanStop()
    }
}

private func be16(_ value: UInt16) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
private func be32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
private func be64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
private func load32(_ bytes: [UInt8], _ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
private func load64(_ bytes: [UInt8], _ at: Int) -> UInt64 { bytes[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) } }
