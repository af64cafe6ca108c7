import CStrataShim
import Glibc

/// Waits for termination signals through a queue executor's ring, so a daemon's shutdown runs as
/// ordinary async code. A handler writes each signal's number into a pipe (signal masks cannot be
/// relied on: the Swift runtime may run `main` off the main thread, so no mask reaches every
/// thread), and `wait` reads the pipe through the ring. One waiter per process.
public final class SignalWaiter: Sendable {
    private let readFd: Int32
    private let writeFd: Int32
    private let signals: [Int32]

    public init(signals: [Int32]) throws(SystemError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw SystemError("pipe for signals", errno: errno) }
        readFd = fds[0]
        writeFd = fds[1]
        self.signals = signals
        // The handler must never block (a full pipe just drops the byte: one pending is enough);
        // the read end stays blocking, since io_uring polls it and would hand back EAGAIN otherwise.
        _ = fcntl(writeFd, F_SETFL, O_NONBLOCK)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        for signal in signals {
            let result = strata_signal_to_pipe(signal, writeFd)
            if result != 0 { throw SystemError("sigaction \(signal)", errno: -result) }
        }
    }

    /// Wakes `wait` as if `signal` had arrived: how a daemon's own stop request (QMP `quit`) takes
    /// the same shutdown path as SIGTERM. Safe from any thread.
    public func post(_ signal: Int32) {
        precondition(signal >= 0 && signal < 256, "a posted signal fits the pipe's one byte")
        var byte = UInt8(signal)
        _ = write(writeFd, &byte, 1)
    }

    /// Waits for one of the signals; returns its number. Must run on a queue executor.
    public nonisolated(nonsending) func wait() async throws(SystemError) -> Int32 {
        let executor = RingSocket.currentExecutor("SignalWaiter.wait")
        // A parent may have started us with the signals blocked (a spawning thread's mask is
        // inherited), which would leave them pending for ever: this executor's own thread takes them.
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        let fd = readFd
        let byte = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        defer { byte.deallocate() }
        while true {
            let result = await executor.perform { io_uring_prep_read($0, fd, byte, 1, 0) }
            if result == 1 { return Int32(byte.pointee) }
            if result == -EINTR || result == -EAGAIN { continue }
            throw SystemError("read signal pipe", errno: result < 0 ? -result : EIO)
        }
    }
}
