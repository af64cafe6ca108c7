import CStrataShim
import Glibc
import StrataRuntime

/// The file node's control-path calls (open, resize), run on the control executor's thread and
/// through its ring, so they never block a queue thread.
actor FileControlRing {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let executor: QueueExecutor

    init(executor: QueueExecutor) {
        self.executor = executor
        self.unownedExecutor = executor.asUnownedSerialExecutor()
    }

    /// openat through the ring. The kernel copies the path when the SQE is submitted, after the
    /// preparing closure returned, so the path lives in a C copy until the call completes.
    /// Returns the descriptor or -errno.
    func openFile(path: String, flags: Int32) async -> Int32 {
        guard let cPath = strdup(path) else { return -ENOMEM }
        defer { free(cPath) }
        return await executor.perform { io_uring_prep_openat($0, AT_FDCWD, cPath, flags, 0) }
    }

    /// ftruncate through IORING_OP_FTRUNCATE; kernels before 6.9 answer EINVAL (unknown opcode)
    /// or EOPNOTSUPP, and then the plain syscall runs here instead. Returns 0 or -errno.
    func truncate(fd: Int32, length: UInt64) async -> Int32 {
        var result = await executor.perform { strata_prep_ftruncate($0, fd, length) }
        if result == -EINVAL || result == -EOPNOTSUPP {
            result = Glibc.ftruncate(fd, off_t(length)) == 0 ? 0 : -errno
        }
        return result
    }
}
