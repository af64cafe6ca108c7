import Foundation
import Glibc
import StrataRuntime
import Testing

/// The client side: plain blocking sockets, run on their own threads (`offPool`) so they never
/// block the cooperative pool the test itself awaits on.
private enum BlockingClient {
    static func connectUnix(_ path: String) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(result == 0, "connect \(path): errno \(errno)")
        return withTimeout(fd)
    }

    static func connectTCP(port: UInt16) -> Int32 {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(result == 0, "connect 127.0.0.1:\(port): errno \(errno)")
        return withTimeout(fd)
    }

    /// A receive timeout turns a server that never answers into a failed test instead of a hang.
    private static func withTimeout(_ fd: Int32) -> Int32 {
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    /// Receives `count` bytes, or fewer when the stream ends or times out.
    static func receive(_ fd: Int32, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n <= 0 { break }
            done += n
        }
        return Array(bytes[0..<done])
    }

    /// Sends `message` on another thread while receiving its echo here: a 1 MiB message does not
    /// fit the socket buffers, so sending it all before reading would deadlock with the server.
    static func exchange(_ fd: Int32, _ message: [UInt8]) -> [UInt8] {
        let sender = Thread { _ = sendAll(fd, message) }
        sender.start()
        return receive(fd, count: message.count)
    }

    /// Closes with SO_LINGER 0: the peer gets a reset rather than an orderly end of stream.
    static func reset(_ fd: Int32) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
    }
}

/// Runs blocking client code on a thread of its own and awaits its result.
private func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ Int(seed)) }
}

private func socketPath(_ name: String) -> String {
    "/tmp/strata-ring-\(getpid())-\(name).sock"
}

private func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// Echoes one connection until the peer ends it, then closes it; returns the bytes echoed.
/// Runs on the queue executor of the task that calls it.
private func echo(_ socket: RingSocket) async -> Result<Int, SystemError> {
    let capacity = 64 << 10
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    defer { buffer.deallocate() }
    var total = 0
    do throws(SystemError) {
        while true {
            let received = try await socket.receive(into: buffer, count: capacity)
            if received == 0 { break }
            try await socket.sendAll(from: buffer, count: received)
            total += received
        }
        try await socket.close()
        return .success(total)
    } catch {
        try? await socket.close()
        return .failure(error)
    }
}

/// Accepts `connections` connections one after another on `executor` and echoes each.
private func serveEcho(_ listener: RingListener, connections: Int, on executor: QueueExecutor) -> Task<[Result<Int, SystemError>], Never> {
    Task(executorPreference: executor) {
        var results: [Result<Int, SystemError>] = []
        for _ in 0..<connections {
            do throws(SystemError) {
                results.append(await echo(try await listener.accept()))
            } catch {
                results.append(.failure(error))
            }
        }
        return results
    }
}

@Suite(.timeLimit(.minutes(1)))
struct RingSocketTests {
    /// Small, odd-sized and 1 MiB messages on one connection come back byte for byte; the
    /// client's close reaches the server as EOF (receive returns 0), ending the echo cleanly.
    private func roundTrip(_ listener: RingListener, connect: @escaping @Sendable () -> Int32) async throws {
        let executor = try QueueExecutor(name: "ring-echo")
        let sizes = [1, 100, 65_536 + 7, 1 << 20]
        let server = serveEcho(listener, connections: 1, on: executor)
        let mismatches = await offPool { () -> [Int] in
            let fd = connect()
            defer { close(fd) }
            var mismatched: [Int] = []
            for (index, size) in sizes.enumerated() {
                let message = pattern(size, seed: UInt8(index))
                if BlockingClient.exchange(fd, message) != message { mismatched.append(size) }
            }
            return mismatched
        }
        #expect(mismatches.isEmpty)
        let results = await server.value
        #expect(results.count == 1)
        #expect((try? results[0].get()) == sizes.reduce(0, +))
        listener.close()
        await executor.shutdown()
    }

    @Test func echoRoundTripsOverUnixSocket() async throws {
        let path = socketPath("echo")
        unlink(path)
        let listener = try RingListener.unix(path: path)
        try await roundTrip(listener) { BlockingClient.connectUnix(path) }
        #expect(access(path, F_OK) != 0, "close removes the socket file")
    }

    @Test func echoRoundTripsOverTCP() async throws {
        let listener = try RingListener.tcp(host: "127.0.0.1", port: 0)
        let port = try #require(listener.port)
        #expect(port != 0)
        try await roundTrip(listener) { BlockingClient.connectTCP(port: port) }
    }

    /// A client that closes before sending anything is EOF at once; `receiveExactly` turns a
    /// close in the middle of a message into ECONNRESET, and a reset mid-message into an error too.
    @Test func endOfStreamAndVanishingClients() async throws {
        let executor = try QueueExecutor(name: "ring-eof")
        // TCP, so SO_LINGER 0 really sends a reset (a Unix socket just ends the stream).
        let listener = try RingListener.tcp(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let port = try #require(listener.port)
        let server = Task(executorPreference: executor) { () -> [Result<Int, SystemError>] in
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
            defer { buffer.deallocate() }
            var results: [Result<Int, SystemError>] = []
            for exact in [false, true, true] {
                do throws(SystemError) {
                    let socket = try await listener.accept()
                    defer { Glibc.close(socket.fd) }
                    if exact {
                        try await socket.receiveExactly(into: buffer, count: 4096)
                        results.append(.success(4096))
                    } else {
                        results.append(.success(try await socket.receive(into: buffer, count: 4096)))
                    }
                } catch {
                    results.append(.failure(error))
                }
            }
            return results
        }
        await offPool {
            close(BlockingClient.connectTCP(port: port))
            let orderly = BlockingClient.connectTCP(port: port)
            _ = BlockingClient.sendAll(orderly, [UInt8](repeating: 7, count: 1000))
            close(orderly)
            let abrupt = BlockingClient.connectTCP(port: port)
            _ = BlockingClient.sendAll(abrupt, [UInt8](repeating: 7, count: 1000))
            BlockingClient.reset(abrupt)
        }
        let results = await server.value
        #expect(results.count == 3)
        #expect((try? results[0].get()) == 0)
        guard case .failure(let cut) = results[1] else { Issue.record("half a message then close did not fail"); return }
        #expect(cut.errno == ECONNRESET)
        guard case .failure = results[2] else { Issue.record("half a message then reset did not fail"); return }
        await executor.shutdown()
    }

    /// Sending to a peer that went away fails with EPIPE or ECONNRESET; MSG_NOSIGNAL keeps
    /// SIGPIPE from killing the process.
    @Test func sendingToAVanishedPeerFails() async throws {
        let executor = try QueueExecutor(name: "ring-epipe")
        let listener = try RingListener.tcp(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let port = try #require(listener.port)
        let accepted = Task(executorPreference: executor) { () throws(SystemError) -> RingSocket in
            try await listener.accept()
        }
        await offPool { BlockingClient.reset(BlockingClient.connectTCP(port: port)) }
        let socket = try await accepted.value
        let result = await Task(executorPreference: executor) { () -> SystemError? in
            let count = 4 << 20
            let payload = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16)
            defer { payload.deallocate() }
            payload.initializeMemory(as: UInt8.self, repeating: 1, count: count)
            do throws(SystemError) {
                try await socket.sendAll(from: payload, count: count)
            } catch {
                try? await socket.close()
                return error
            }
            try? await socket.close()
            return nil
        }.value
        let error = try #require(result)
        #expect(error.errno == EPIPE || error.errno == ECONNRESET)
        await executor.shutdown()
    }

    /// A server stopping wakes an accept that is waiting in the ring: closing the descriptor
    /// would not (the ring holds its own reference), shutting the listener down does.
    @Test func listenerShutdownWakesAPendingAccept() async throws {
        let executor = try QueueExecutor(name: "ring-stop")
        let path = socketPath("stop")
        unlink(path)
        let listener = try RingListener.unix(path: path)
        defer { listener.close() }
        let accepting = Task(executorPreference: executor) { () -> SystemError? in
            do throws(SystemError) {
                let socket = try await listener.accept()
                try? await socket.close()
                return nil
            } catch {
                return error
            }
        }
        // Give the accept time to reach the ring; shutting down earlier fails it just the same.
        try await Task.sleep(for: .milliseconds(50))
        listener.shutdown()
        let error = try #require(await accepting.value)
        #expect(error.errno == EINVAL)
        await executor.shutdown()
    }

    /// 500 connections, some echoing a byte, some closed at once, some reset: every accepted
    /// descriptor is closed again, so the process's open descriptors are as many as before.
    @Test func fiveHundredConnectionsLeaveNoDescriptorsBehind() async throws {
        let executor = try QueueExecutor(name: "ring-fds")
        let path = socketPath("fds")
        unlink(path)
        let listener = try RingListener.unix(path: path)
        let connections = 500
        let before = openDescriptorCount()
        let server = serveEcho(listener, connections: connections, on: executor)
        let echoed = await offPool { () -> Int in
            var echoed = 0
            for index in 0..<connections {
                let fd = BlockingClient.connectUnix(path)
                switch index % 3 {
                case 0:
                    if BlockingClient.exchange(fd, [UInt8(index & 0xFF)]) == [UInt8(index & 0xFF)] { echoed += 1 }
                    close(fd)
                case 1: close(fd)
                default: BlockingClient.reset(fd)
                }
            }
            return echoed
        }
        let results = await server.value
        let after = openDescriptorCount()
        #expect(echoed == (connections + 2) / 3)
        #expect(results.count == connections)
        #expect(before > 0)
        #expect(after == before, "open descriptors before \(before), after \(after)")
        listener.close()
        await executor.shutdown()
    }
}
