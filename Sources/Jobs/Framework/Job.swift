import Glibc
import StrataFormatting
import StrataRuntime

/// One job: QEMU's Job around a `JobDriver`, on the control executor. It moves through QEMU's
/// statuses only as `JobTables` allows, accepts verbs only where the table does, and sends
/// JOB_STATUS_CHANGE for every move (and the BLOCK_JOB_* events for block jobs), in QEMU's order:
/// created, running, [paused/ready/standby], waiting, pending, concluded, null on success;
/// aborting, concluded, null on failure or cancel.
public actor Job: JobContext {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    public nonisolated let id: String
    nonisolated let driver: any JobDriver
    public nonisolated let autoFinalize: Bool
    public nonisolated let autoDismiss: Bool
    private let emit: @Sendable (JobEvent) async -> Void
    private let onDismissed: @Sendable (String) async -> Void
    /// The grouped transaction the job belongs to, if any.
    private let transaction: JobTransaction?

    public private(set) var status: JobStatus = .undefined
    private var currentProgress: UInt64 = 0
    private var totalProgress: UInt64 = 0
    public private(set) var speed: UInt64
    private var errorText: String?
    /// User pauses plus internal ones; the job pauses at its next pause point while above 0.
    private var pauseCount = 0
    private var userPaused = false
    public private(set) var isCancelled = false
    /// block-job-cancel without force on a READY job: it finishes without its pivot.
    public private(set) var finishesWithoutPivot = false
    private var runFinished = false
    /// QEMU's BlockDeviceIoStatus: "ok", or "failed"/"nospace" while stopped by an error policy.
    private var ioStatus = "ok"
    private var resumeWaiters: [CheckedContinuation<Void, Never>] = []

    public nonisolated var type: JobType { driver.type }

    init(id: String, driver: any JobDriver, autoFinalize: Bool, autoDismiss: Bool, speed: UInt64, control: QueueExecutor,
         transaction: JobTransaction? = nil, emit: @escaping @Sendable (JobEvent) async -> Void,
         onDismissed: @escaping @Sendable (String) async -> Void) {
        self.id = id
        self.transaction = transaction
        self.driver = driver
        self.autoFinalize = autoFinalize
        self.autoDismiss = autoDismiss
        self.speed = speed
        self.emit = emit
        self.onDismissed = onDismissed
        unownedExecutor = control.asUnownedSerialExecutor()
    }

    // MARK: - Lifecycle

    /// created, then running; the driver's work runs as a task on the control executor.
    func start() async {
        await move(to: .created)
        await move(to: .running)
        Task { await self.body() }
    }

    private func body() async {
        await pausePoint()
        var failure: (any Error)?
        if !isCancelled {
            do { try await driver.run(self) } catch { failure = error }
        }
        runFinished = true
        let succeeded = !isCancelled && failure == nil
        if succeeded { await move(to: .waiting) }
        if let transaction, await !transaction.finished(self, succeeded: succeeded), succeeded {
            // Another job of the grouped transaction failed or was cancelled.
            isCancelled = true
            await abort(nil)
            return
        }
        if !succeeded {
            await abort(failure)
        } else {
            await move(to: .pending)
            if autoFinalize {
                await finalizeNow()
            } else if driver.isBlockJob {
                await emit(JobEvent("BLOCK_JOB_PENDING", [("type", .string(type.rawValue)), ("id", .string(id))]))
            }
        }
    }

    private func finalizeNow() async {
        do {
            try await driver.commit()
        } catch {
            await abort(error)
            return
        }
        if driver.isBlockJob { await emit(blockJobEvent("BLOCK_JOB_COMPLETED", error: nil)) }
        await move(to: .concluded)
        if autoDismiss { await dismissNow() }
    }

    private func abort(_ failure: (any Error)?) async {
        await move(to: .aborting)
        await driver.abort()
        if let failure { errorText = "\(failure)" }
        if driver.isBlockJob {
            await emit(failure == nil ? blockJobEvent("BLOCK_JOB_CANCELLED", error: nil) : blockJobEvent("BLOCK_JOB_COMPLETED", error: errorText))
        }
        await move(to: .concluded)
        if autoDismiss { await dismissNow() }
    }

    private func dismissNow() async {
        await move(to: .null)
        await onDismissed(id)
    }

    private func move(to next: JobStatus) async {
        precondition(JobTables.allows(status, next), "job \(id): \(status.rawValue) -> \(next.rawValue) is not in QEMU's transition table")
        status = next
        await emit(JobEvent("JOB_STATUS_CHANGE", [("id", .string(id)), ("status", .string(next.rawValue))]))
    }

    private func blockJobEvent(_ name: String, error: String?) -> JobEvent {
        var fields: [(String, OrderedJSON)] = [
            ("type", .string(type.rawValue)), ("device", .string(id)), ("len", .uint(totalProgress)),
            ("offset", .uint(currentProgress)), ("speed", .uint(speed)),
        ]
        if let error { fields.append(("error", .string(error))) }
        return JobEvent(name, fields)
    }

    // MARK: - JobContext

    public func pausePoint() async {
        while pauseCount > 0 && !isCancelled {
            let resumed: JobStatus = status == .ready ? .ready : .running
            await move(to: status == .ready ? .standby : .paused)
            // Sending the event suspended this actor: a job-resume (or cancel) that ran meanwhile
            // found no waiter to wake, so look again, inside the continuation's body: any await
            // (even the one that reaches that body) can let other calls on this actor run first.
            await withCheckedContinuation { waiter in
                if pauseCount > 0 && !isCancelled { resumeWaiters.append(waiter) } else { waiter.resume() }
            }
            await move(to: resumed)
        }
    }

    public func setProgress(current: UInt64, total: UInt64) {
        currentProgress = current
        totalProgress = total
    }

    public func becomeReady() async {
        await move(to: .ready)
        if driver.isBlockJob { await emit(blockJobEvent("BLOCK_JOB_READY", error: nil)) }
    }

    public func reportError(_ status: IOStatus, isRead: Bool, policy: JobErrorPolicy) async -> JobErrorAction {
        let action = policy.action(for: status)
        await emit(JobEvent("BLOCK_JOB_ERROR", [("device", .string(id)), ("operation", .string(isRead ? "read" : "write")),
                                                ("action", .string(action.rawValue))]))
        if action == .stop {
            if !userPaused {
                userPaused = true
                pauseCount += 1
            }
            ioStatus = status.errno == ENOSPC ? "nospace" : "failed"
        }
        return action
    }

    private func wakeWaiters() {
        let waiters = resumeWaiters
        resumeWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    // MARK: - Verbs

    private func check(_ verb: JobVerb) throws(JobError) {
        guard JobTables.accepts(verb, in: status) else { throw .verb(verb, job: id, status: status) }
    }

    public func pause() throws(JobError) {
        try check(.pause)
        guard !userPaused else { throw JobError("Job is already paused") }
        userPaused = true
        pauseCount += 1
    }

    public func resume() throws(JobError) {
        guard userPaused, pauseCount > 0 else { throw JobError("Can't resume a job that was not paused") }
        try check(.resume)
        userPaused = false
        pauseCount -= 1
        ioStatus = "ok"
        if pauseCount == 0 { wakeWaiters() }
    }

    public func cancel(force: Bool) async throws(JobError) {
        try check(.cancel)
        if !force && (status == .ready || status == .standby) {
            // As QEMU's mirror: a READY job cancelled without force completes, without its pivot.
            finishesWithoutPivot = true
            wakeWaiters()
            return
        }
        isCancelled = true
        wakeWaiters()
        // A job that already ran waits for job-finalize: abort it now.
        if runFinished && status == .pending { await abort(nil) }
    }

    public func complete() async throws(JobError) {
        try check(.complete)
        // As QEMU 7.2's job_complete: a paused (standby) job may be asked; it completes once resumed.
        guard !isCancelled else { throw JobError("The active block job '\(id)' cannot be completed") }
        do { try await driver.complete(self) } catch let error as JobError { throw error } catch { throw JobError("\(error)") }
    }

    public func finalize() async throws(JobError) {
        try check(.finalize)
        await finalizeNow()
    }

    public func dismiss() async throws(JobError) {
        try check(.dismiss)
        await dismissNow()
    }

    public func setSpeed(_ bytesPerSecond: UInt64) throws(JobError) {
        try check(.setSpeed)
        speed = bytesPerSecond
    }

    public func snapshot() -> JobSnapshot {
        JobSnapshot(id: id, type: type, status: status, currentProgress: currentProgress, totalProgress: totalProgress, speed: speed,
                    error: errorText, isBlockJob: driver.isBlockJob, isPaused: pauseCount > 0,
                    isBusy: status == .running || status == .ready, isReady: status == .ready || status == .standby,
                    autoFinalize: autoFinalize, autoDismiss: autoDismiss, ioStatus: ioStatus)
    }
}
