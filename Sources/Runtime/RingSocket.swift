import CStrataShim
import Glibc

/// A connected stream socket whose I/O goes through the calling queue executor's io_uring ring.
///
/// The socket is only a descriptor: it is not bound to one executor, so a connection accepted on
/// one queue can be served on another. Every operation must run on some queue executor (a task
/// with that executor as its preference, or an actor bound to it) and uses that executor's ring.
/// The socket stays in blocking mode: io_uring polls it internally, so no operation parks the
/// executor's thread.
///
/// The owner closes it exactly once (`close()`); a value type cannot do that on its own.
public struct RingSocket: Sendable, Hashable {
    public let fd: Int32

    public init(fd: Int32) {
        self.fd = fd
    }

    /// Largest count passed to one SQE: io_uring's send and recv lengths are 32-bit.
    static let maxTransferBytes = 1 << 30

    /// The ring of the queue executor running the caller.
    @inline(__always) static func currentExecutor(_ operation: StaticString) -> QueueExecutor {
        guard let executor = QueueExecutor.current else {
            preconditionFailure("RingSocket.\(operation) must run on a queue executor")
        }
        return executor
    }

    /// Receives up to `count` bytes; returns how many arrived, 0 when the peer closed its side.
    public nonisolated(nonsending) func receive(into buffer: UnsafeMutableRawPointer, count: Int) async throws(SystemError) -> Int {
        assert(count > 0, "a receive asks for at least one byte: 0 would read as the peer's EOF")
        let executor = Self.currentExecutor("receive")
        let fd = self.fd
        let length = min(count, Self.maxTransferBytes)
        while true {
            let result = await executor.perform { io_uring_prep_recv($0, fd, buffer, length, 0) }
            if result >= 0 { return Int(result) }
            // EINTR is a signal landing while io_uring waited on the socket: nothing was consumed.
            if result == -EINTR { continue }
            throw SystemError("recv", errno: -result)
        }
    }

    /// Receives exactly `count` bytes. A peer closing before all arrived is an error (ECONNRESET):
    /// a protocol message cut in half cannot be used.
    public nonisolated(nonsending) func receiveExactly(into buffer: UnsafeMutableRawPointer, count: Int) async throws(SystemError) {
        var done = 0
        while done < count {
            let received = try await receive(into: buffer + done, count: count - done)
            if received == 0 {
                throw SystemError("recv: peer closed after \(done) of \(count) bytes", errno: ECONNRESET)
            }
            done += received
        }
    }

    /// Sends up to `count` bytes; returns how many the kernel took. MSG_NOSIGNAL turns a send to a
    /// vanished peer into EPIPE instead of a process-killing SIGPIPE.
    public nonisolated(nonsending) func send(from buffer: UnsafeRawPointer, count: Int) async throws(SystemError) -> Int {
        assert(count > 0, "a send carries at least one byte")
        let executor = Self.currentExecutor("send")
        let fd = self.fd
        let length = min(count, Self.maxTransferBytes)
        let flags = Int32(MSG_NOSIGNAL)
        while true {
            let result = await executor.perform { io_uring_prep_send($0, fd, buffer, length, flags) }
            if result >= 0 { return Int(result) }
            if result == -EINTR { continue }
            throw SystemError("send", errno: -result)
        }
    }

    /// Sends all `count` bytes, looping over short sends (a signal or a full socket buffer on a
    /// large message can cut a send short).
    public nonisolated(nonsending) func sendAll(from buffer: UnsafeRawPointer, count: Int) async throws(SystemError) {
        var done = 0
        while done < count {
            let sent = try await send(from: buffer + done, count: count - done)
            // A stream send of a non-empty buffer never returns 0; guard anyway so it cannot spin.
            if sent == 0 { throw SystemError("send: no progress after \(done) of \(count) bytes", errno: EPIPE) }
            done += sent
        }
    }

    /// Sends the buffers `message` gathers, in order; returns how many bytes the kernel took (a
    /// short send leaves the caller to advance its iovecs). The message and its iovecs must stay
    /// valid until this returns.
    public nonisolated(nonsending) func sendMessage(_ message: UnsafePointer<msghdr>) async throws(SystemError) -> Int {
        let executor = Self.currentExecutor("sendMessage")
        let fd = self.fd
        let flags = UInt32(MSG_NOSIGNAL)
        while true {
            let result = await executor.perform { io_uring_prep_sendmsg($0, fd, message, flags) }
            if result >= 0 { return Int(result) }
            if result == -EINTR { continue }
            throw SystemError("sendmsg", errno: -result)
        }
    }

    /// Receives into the buffers `message` scatters to, with its control buffer for ancillary data
    /// (SCM_RIGHTS); returns the bytes received, 0 when the peer closed. The message, its iovecs
    /// and control buffer must stay valid until this returns; `msg_flags` then says what happened
    /// (MSG_CTRUNC: descriptors were dropped).
    public nonisolated(nonsending) func receiveMessage(_ message: UnsafeMutablePointer<msghdr>) async throws(SystemError) -> Int {
        let executor = Self.currentExecutor("receiveMessage")
        let fd = self.fd
        let flags = UInt32(MSG_CMSG_CLOEXEC)
        while true {
            let result = await executor.perform { io_uring_prep_recvmsg($0, fd, message, flags) }
            if result >= 0 { return Int(result) }
            if result == -EINTR { continue }
            throw SystemError("recvmsg", errno: -result)
        }
    }

    /// Ends one or both directions (SHUT_RD, SHUT_WR, SHUT_RDWR) while keeping the descriptor, so
    /// a receive blocked on another task returns EOF and the peer sees the end of the stream.
    public nonisolated(nonsending) func shutdown(_ how: Int32 = Int32(SHUT_RDWR)) async throws(SystemError) {
        let executor = Self.currentExecutor("shutdown")
        let fd = self.fd
        let result = await executor.perform { io_uring_prep_shutdown($0, fd, how) }
        // ENOTCONN: the peer already went away, which is what shutting down wanted.
        if result < 0 && result != -ENOTCONN { throw SystemError("shutdown", errno: -result) }
    }

    /// Closes the descriptor through the ring. The descriptor is gone even when this throws
    /// (close's error only reports what happened to data already sent), so never retry it.
    public nonisolated(nonsending) func close() async throws(SystemError) {
        let executor = Self.currentExecutor("close")
        let fd = self.fd
        let result = await executor.perform { io_uring_prep_close($0, fd) }
        if result < 0 { throw SystemError("close", errno: -result) }
    }
}
