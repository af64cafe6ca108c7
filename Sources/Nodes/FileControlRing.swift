import CStrataShim
import Glibc
import StrataRuntime

/// The file node's control-path calls (resize), run on the control executor's thread and through
/// its ring, so they never block a queue thread.
actor FileControlRing {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let executor: QueueExecutor

    init(executor: QueueExecutor) {
        self.executor = executor
        self.unownedExecutor = executor.asUnownedSerialExecutor()
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
