import StrataRuntime

/// The jobs one `transaction` started with `completion-mode: grouped` (QEMU's JobTxn): each waits,
/// once its work is done, until all are done; they then finalize together, and if one fails or is
/// cancelled, every other is cancelled (BLOCK_JOB_CANCELLED) and none finalizes.
public actor JobTransaction {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    private var members: [Job] = []
    private var running = 0
    private var failed = false
    private var waiters: [CheckedContinuation<Bool, Never>] = []

    public init(control: QueueExecutor) { unownedExecutor = control.asUnownedSerialExecutor() }

    func add(_ job: Job) {
        members.append(job)
        running += 1
    }

    /// A member's work ended. Returns whether it may finalize: true once every member succeeded,
    /// false as soon as one did not.
    func finished(_ job: Job, succeeded: Bool) async -> Bool {
        running -= 1
        if !succeeded && !failed {
            failed = true
            resumeWaiters()
            for other in members where other !== job { try? await other.cancel(force: true) }
            return false
        }
        if failed { return false }
        if running == 0 {
            resumeWaiters()
            return true
        }
        return await withCheckedContinuation { waiter in
            if failed || running == 0 { waiter.resume(returning: !failed) } else { waiters.append(waiter) }
        }
    }

    private func resumeWaiters() {
        let ready = waiters
        waiters = []
        for waiter in ready { waiter.resume(returning: !failed) }
    }
}
