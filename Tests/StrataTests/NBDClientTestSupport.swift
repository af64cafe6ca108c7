import Foundation
import Glibc
import StrataGraph
import StrataNBD
import StrataNBDClient
import StrataRuntime
import Synchronization
import Testing

/// A real NBD server (qemu-nbd or nbdkit) run by a test, ready once its socket accepts. Spawned
/// through `NBDServerProcess` (posix_spawn with a clean signal mask, waitpid with a timeout), so
/// stopping it can never wait for ever.
final class PeerNBDServer: @unchecked Sendable {
    // @unchecked Sendable: started, signalled and reaped by the one test that owns this value.
    private let server: NBDServerProcess
    let description: String

    /// Starts `tool` and waits until `unixPath` (or TCP `port` on 127.0.0.1) accepts connections.
    init(_ tool: String, _ arguments: [String], unixPath: String? = nil, port: UInt16? = nil) async throws {
        if let unixPath { unlink(unixPath) }
        // qemu-nbd serves one client at a time by default (-e 1): later ones wait in the listen
        // backlog until it notices the earlier one left, which the readiness probe and tests that
        // reconnect would otherwise race with.
        let arguments = tool == "qemu-nbd" ? ["-e", "16"] + arguments : arguments
        description = "\(tool) \(arguments.joined(separator: " "))"
        let readiness: NBDServerProcess.Readiness = unixPath.map { .unixSocket($0) } ?? .tcpPort(Int(port ?? 0))
        let log = NSTemporaryDirectory() + "strata-peer-\(UInt32.random(in: 0...UInt32.max)).log"
        server = try NBDServerProcess([tool] + arguments, readiness: readiness, logPath: log)
    }

    /// Kills the server (SIGKILL by default: the page cache keeps whatever it wrote) and reaps it.
    func stop(signal: Int32 = SIGKILL) {
        _ = server.stop(signal: signal, timeout: 5)
    }

    static func unixAddress(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        return address
    }
}

/// A misbehaving NBD server on a Unix socket, on a thread of its own with blocking sockets: it
/// negotiates properly (one 1 MiB export "", structured replies), then answers requests as told.
final class FakeNBDServer: @unchecked Sendable {
    // @unchecked Sendable: `listenFD` and `path` are immutable; the server thread owns the rest,
    // and `stop()` only shuts the listening socket down and waits for that thread.
    enum Behaviour: Sendable {
        /// A reply whose magic is 0xdeadbeef.
        case wrongMagic
        /// A simple reply to a cookie that was never sent.
        case unknownCookie
        /// The first connection hangs up on its first request; later ones serve it.
        case hangUpOnFirstRequest
    }

    static let exportBytes: UInt64 = 1 << 20
    /// What the served reads return in the first half of a request; the second half is a hole.
    static let dataByte: UInt8 = 0x5a

    let path: String
    private let listenFD: Int32
    private let finished = DispatchSemaphore(value: 0)

    init(path: String, behaviour: Behaviour) {
        self.path = path
        unlink(path)
        listenFD = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = PeerNBDServer.unixAddress(path)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listenFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        _ = listen(listenFD, 4)
        let thread = Thread { [self] in
            var index = 0
            while true {
                let fd = accept(listenFD, nil, nil)
                if fd < 0 { break }
                index += 1
                serve(fd, behaviour: behaviour, connection: index)
                close(fd)
            }
            finished.signal()
        }
        thread.start()
    }

    /// Wakes the accept (shutdown on a listening socket), waits for the thread and cleans up.
    func stop() {
        shutdown(listenFD, Int32(SHUT_RDWR))
        finished.wait()
        close(listenFD)
        unlink(path)
    }

    private func serve(_ fd: Int32, behaviour: Behaviour, connection: Int) {
        var handshake = NBDServerHandshake(catalog: NBDExportList([NBDExport(name: "", sizeBytes: Self.exportBytes)]))
        send(fd, handshake.takeOutbound())
        var pending: [UInt8] = []
        negotiation: while true {
            let bytes = receive(fd)
            if bytes.isEmpty { return }
            let (leftover, events) = handshake.feed(bytes)
            send(fd, handshake.takeOutbound())
            for event in events {
                switch event {
                case .transmission:
                    pending = leftover
                    break negotiation
                case .aborted, .disconnect:
                    return
                default:
                    break
                }
            }
        }
        while true {
            while pending.count < NBDRequest.headerBytes {
                let bytes = receive(fd)
                if bytes.isEmpty { return }
                pending += bytes
            }
            let header = Array(pending[0..<NBDRequest.headerBytes])
            pending.removeFirst(NBDRequest.headerBytes)
            guard let request = try? header.withUnsafeBytes({ try NBDRequest.parse($0) }), request.command != .disconnect else { return }
            while pending.count < request.payloadBytes {
                let bytes = receive(fd)
                if bytes.isEmpty { return }
                pending += bytes
            }
            pending.removeFirst(request.payloadBytes)
            var reply = [UInt8](repeating: 0, count: NBDReplyEncoder.offsetDataHeaderBytes + Int(request.length) + NBDReplyEncoder.offsetHoleBytes)
            switch behaviour {
            case .wrongMagic:
                _ = reply.withUnsafeMutableBytes { NBDReplyEncoder.simpleReply(cookie: request.cookie, error: nil, into: $0) }
                reply.withUnsafeMutableBytes { NBDWire.store32(0xdead_beef, $0, at: 0) }
                send(fd, Array(reply[0..<NBDReplyEncoder.simpleReplyBytes]))
            case .unknownCookie:
                _ = reply.withUnsafeMutableBytes { NBDReplyEncoder.simpleReply(cookie: request.cookie &+ 1000, error: nil, into: $0) }
                send(fd, Array(reply[0..<NBDReplyEncoder.simpleReplyBytes]))
            case .hangUpOnFirstRequest where connection == 1:
                return
            case .hangUpOnFirstRequest:
                send(fd, properReply(to: request))
            }
        }
    }

    /// READ: data for the first half, a hole for the rest; anything else: success.
    private func properReply(to request: NBDRequest) -> [UInt8] {
        guard request.command == .read, request.length >= 2 else {
            var reply = [UInt8](repeating: 0, count: NBDReplyEncoder.simpleReplyBytes)
            _ = reply.withUnsafeMutableBytes { NBDReplyEncoder.simpleReply(cookie: request.cookie, error: nil, into: $0) }
            return reply
        }
        let half = request.length / 2
        var reply = [UInt8](repeating: 0, count: NBDReplyEncoder.offsetDataHeaderBytes)
        _ = reply.withUnsafeMutableBytes {
            NBDReplyEncoder.offsetDataHeader(cookie: request.cookie, offset: request.offset, dataLength: half, done: false, into: $0)
        }
        reply += [UInt8](repeating: Self.dataByte, count: Int(half))
        var hole = [UInt8](repeating: 0, count: NBDReplyEncoder.offsetHoleBytes)
        _ = hole.withUnsafeMutableBytes {
            NBDReplyEncoder.offsetHole(cookie: request.cookie, offset: request.offset + UInt64(half),
                                       holeLength: request.length - half, done: true, into: $0)
        }
        return reply + hole
    }

    private func send(_ fd: Int32, _ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count <= 0 { return }
            sent += count
        }
    }

    private func receive(_ fd: Int32) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return count > 0 ? Array(buffer[0..<count]) : []
    }
}

/// An nbd node opened through its descriptor on a test harness, closed again on every path
/// (an unclosed connection keeps a receive in the queue's ring and the harness could not stop).
enum NBDNodeFixture {
    static func withNode<T>(
        _ harness: NodeTestHarness, options: [String: JSONValue],
        _ body: (any NodeState, any BlockNode) async throws -> T
    ) async throws -> T {
        let state = try await harness.open(NBDClientNode.descriptor, name: "nbd0", options: ["driver": "nbd"].merging(options) { $1 })
        let node = harness.instance(state)
        do {
            let result = try await body(state, node)
            await state.close()
            return result
        } catch {
            await state.close()
            throw error
        }
    }

    /// Options for a Unix-socket server.
    static func unix(_ path: String, export: String? = nil, reconnectDelay: Int? = nil, readOnly: Bool = false) -> [String: JSONValue] {
        var options: [String: JSONValue] = ["server": .object(["type": "unix", "path": .string(path)])]
        if let export { options["export"] = .string(export) }
        if let reconnectDelay { options["reconnect-delay"] = .int(Int64(reconnectDelay)) }
        if readOnly { options["read-only"] = .bool(true) }
        return options
    }
}

/// A writable 16 MiB export on a Unix socket from qemu-nbd (raw file, no multi-conn), nbdkit's
/// memory plugin or `strata serve` (both with multi-conn), stopped by `stop()`.
struct WritablePeerExport {
    private var peer: PeerNBDServer?
    private var strataServer: NBDServerProcess?

    init(_ tool: String, socket: String, image: String) async throws {
        switch tool {
        case "qemu-nbd", "nbdkit":
            try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/\(tool)"), "\(tool) is missing: scripts/install-deps installs it")
            let arguments = tool == "qemu-nbd" ? ["-f", "raw", "-t", "-k", socket, image] : ["-f", "-U", socket, "memory", "16M"]
            peer = try await PeerNBDServer(tool, arguments, unixPath: socket)
        default:
            strataServer = try NBDTestServer.start([.init(name: "", image: image, writable: true)], on: .unix(socket),
                                                   scratch: try ScratchDirectory("nbd-peer-serve"))
        }
    }

    func stop() {
        peer?.stop()
        _ = strataServer?.stop()
    }
}

/// Lines collected from many tasks (a class, so escaping closures can share it).
final class NBDTestLog: Sendable {
    private let lines = Locked<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var entries: [String] { lines.withLock { $0 } }
}

/// The JSON report `strata bench --json` prints last, and the line it came from (for messages).
func benchReport(_ output: String) throws -> (report: [String: Any], line: String) {
    let line = try #require(output.split(separator: "\n").last(where: { $0.hasPrefix("{") }), "no JSON report in: \(output)")
    let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    return (report, String(line))
}
