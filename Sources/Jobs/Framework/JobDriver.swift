import StrataRuntime

/// What a kind of job does; the `Job` around it runs the state machine. QEMU's JobDriver: `run`,
/// then, once every job of its transaction is done, `commit` or `abort`, then `clean`.
public protocol JobDriver: Sendable {
    var type: JobType { get }
    /// Block jobs (stream, commit, mirror, backup) also appear in query-block-jobs and send the
    /// BLOCK_JOB_* events; others (create) do not.
    var isBlockJob: Bool { get }
    /// The work. Calls `context.pausePoint()` between steps (where pausing and cancelling take
    /// effect) and reports progress; throws to fail; returns on success, or early once cancelled.
    func run(_ context: JobContext) async throws
    /// The job succeeded: make its result part of the graph (a pivot). Throwing aborts it.
    func commit() async throws
    /// The job failed or was cancelled: undo what it left half done.
    func abort() async
    /// A READY job was asked to finish (job-complete): `run` should return.
    func complete(_ context: JobContext) async throws
}

extension JobDriver {
    public var isBlockJob: Bool { true }
    public func commit() async throws {}
    public func abort() async {}
    public func complete(_ context: JobContext) async throws {
        throw JobError("The active block job '\(await context.id)' cannot be completed")
    }
}

/// What a running job's driver sees of its job.
public protocol JobContext: Actor {
    var id: String { get }
    /// True once the job was cancelled: `run` should stop at its next step.
    var isCancelled: Bool { get }
    /// block-job-cancel without force on a READY job: it finishes as a success, without its pivot.
    var finishesWithoutPivot: Bool { get }
    /// The rate limit in bytes per second (block-job-set-speed); 0 for none.
    var speed: UInt64 { get }
    /// Waits here while the job is paused; returns at once otherwise.
    func pausePoint() async
    func setProgress(current: UInt64, total: UInt64)
    /// The job has caught up and waits for job-complete (mirror, active commit).
    func becomeReady() async
    /// A read (`isRead`) or write of the job failed with `status`: sends BLOCK_JOB_ERROR with the
    /// action `policy` takes, and for `stop` pauses the job as a user pause (`io-status` failed,
    /// or nospace for ENOSPC) until job-resume. The driver then acts: fails on `report`, goes on
    /// on `ignore`, and retries after its next pause point on `stop`.
    func reportError(_ status: IOStatus, isRead: Bool, policy: JobErrorPolicy) async -> JobErrorAction
}
