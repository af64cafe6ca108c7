import CStrataShim
import Glibc

/// One io_uring instance, owned by exactly one thread (its queue executor), which creates,
/// submits to, reaps and destroys it: the kernel defers completion work to that thread's own
/// `io_uring_enter` and its ring descriptor is registered in that thread's table. Not thread-safe
/// by design: submissions batch per loop turn and completions are reaped from shared memory.
final class IORing {
    /// What a completion's user-data points at; the low 3 bits of the pointer say which.
    enum CompletionKind: UInt64 {
        case continuation = 0
        case timer = 1
        case wakeup = 2
        /// A completion nobody waits for: a linked timeout's own CQE.
        case ignored = 3
    }

    static let kindMask: UInt64 = 0b111

    private let ring: OpaquePointer
    let entries: UInt32
    private(set) var inFlight = 0
    private var completedUserData: UnsafeMutablePointer<UInt64>
    private var completedResults: UnsafeMutablePointer<Int32>
    private let reapBatch: Int

    init(entries: UInt32) throws {
        var error: Int32 = 0
        guard let ring = strata_ring_create(entries, &error) else {
            throw SystemError("io_uring_queue_init", errno: error)
        }
        self.ring = ring
        self.entries = entries
        self.reapBatch = Int(entries) * 2
        completedUserData = .allocate(capacity: reapBatch)
        completedResults = .allocate(capacity: reapBatch)
    }

    deinit {
        strata_ring_destroy(ring)
        completedUserData.deallocate()
        completedResults.deallocate()
    }

    /// A free SQE; flushes the submission queue to the kernel first when it is full.
    func nextSQE(userData: UInt64) -> UnsafeMutablePointer<io_uring_sqe> {
        var sqe = strata_ring_get_sqe(ring)
        while sqe == nil {
            _ = strata_ring_submit(ring, 0)
            sqe = strata_ring_get_sqe(ring)
        }
        assert(CompletionKind(rawValue: userData & Self.kindMask) != nil, "an SQE's user data names what its completion resumes")
        strata_sqe_set_data(sqe, userData)
        inFlight += 1
        return sqe!
    }

    /// Makes room for `count` SQEs that must reach the kernel in one submission (a linked chain).
    func reserve(_ count: UInt32) {
        if strata_ring_sq_space_left(ring) < count { _ = strata_ring_submit(ring, 0) }
    }

    var hasPendingSubmissions: Bool { strata_ring_pending_sqes(ring) > 0 }
    var pendingSubmissions: UInt32 { strata_ring_pending_sqes(ring) }

    /// Completions are ready to reap, or wait in the kernel for this thread to enter.
    var hasCompletionsOrKernelWork: Bool { strata_ring_ready_cqes(ring) > 0 || hasKernelWork }

    /// Completions wait in the kernel for this thread to enter (deferred task work).
    var hasKernelWork: Bool { strata_ring_has_kernel_work(ring) != 0 }

    /// One syscall: submits what is queued, runs completion work the kernel deferred to this
    /// thread, and, when `wait` is set, sleeps until a completion. None when there is nothing to do.
    func submit(wait: Bool) {
        guard wait || hasPendingSubmissions || hasKernelWork else { return }
        let result = strata_ring_submit(ring, wait ? 1 : 0)
        precondition(result >= 0 || result == -EINTR || result == -EBUSY || result == -EAGAIN,
                     "io_uring_enter failed: \(result)")
    }

    /// Hands every ready completion to `handle`, without a syscall.
    @inline(__always)
    func reap(_ handle: (UInt64, Int32) -> Void) {
        while true {
            let count = Int(strata_ring_reap(ring, completedUserData, completedResults, UInt32(reapBatch)))
            if count == 0 { return }
            inFlight -= count
            assert(inFlight >= 0, "the ring completed more operations than were submitted")
            for index in 0..<count { handle(completedUserData[index], completedResults[index]) }
            if count < reapBatch { return }
        }
    }
}
