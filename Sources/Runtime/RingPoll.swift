import CStrataShim
import Glibc

/// Readiness of a descriptor that another library reads and writes itself (libiscsi's socket):
/// the calling queue executor's ring polls it, so the library's event loop runs on that queue.
public enum RingPoll {
    /// Waits until `fd` has one of `events` (poll(2) bits) or `timeout` (relative; valid until
    /// this returns) passes. Returns the events that fired, 0 when the time ran out, or -errno.
    public static nonisolated(nonsending) func wait(fd: Int32, events: Int16, timeout: Timeout) async -> Int32 {
        guard let executor = QueueExecutor.current else { preconditionFailure("RingPoll.wait must run on a queue executor") }
        let result = await executor.perform(timeout: timeout.pointer) { io_uring_prep_poll_add($0, fd, UInt32(UInt16(bitPattern: events))) }
        return result == -ECANCELED ? 0 : result
    }

    /// A relative io_uring timeout, in memory the kernel may read until the poll completes.
    public final class Timeout: Sendable {
        // Sendable: the memory is written once in init and only read afterwards.
        nonisolated(unsafe) let pointer: UnsafeMutablePointer<__kernel_timespec>

        public init(nanoseconds: UInt64) {
            pointer = .allocate(capacity: 1)
            pointer.initialize(to: __kernel_timespec(tv_sec: Int64(nanoseconds / 1_000_000_000), tv_nsec: Int64(nanoseconds % 1_000_000_000)))
        }

        deinit { pointer.deallocate() }
    }
}
