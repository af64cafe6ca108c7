import StrataRuntime

/// Every job of a daemon, by id (QEMU's job list), on the control executor.
public actor JobManager {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    private let control: QueueExecutor
    private let emit: @Sendable (JobEvent) async -> Void
    /// Newest first, as QEMU lists them.
    private var jobs: [Job] = []

    public init(control: QueueExecutor, emit: @escaping @Sendable (JobEvent) async -> Void) {
        self.control = control
        self.emit = emit
        unownedExecutor = control.asUnownedSerialExecutor()
    }

    /// QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'.
    static func isWellFormed(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, first.isASCII, first.properties.isAlphabetic else { return false }
        return id.unicodeScalars.dropFirst().allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0)) }
    }

    /// Checks `id` before anything of the job is built (QEMU's job_create checks first).
    public func checkNewID(_ id: String) throws(JobError) {
        guard Self.isWellFormed(id) else { throw JobError("Invalid job ID '\(id)'") }
        guard !jobs.contains(where: { $0.id == id }) else { throw JobError("Job ID '\(id)' already in use") }
    }

    /// Creates and starts a job; it is created and running when this returns.
    @discardableResult
    public func start(id: String, driver: any JobDriver, autoFinalize: Bool = true, autoDismiss: Bool = true,
                      speed: UInt64 = 0) async throws(JobError) -> Job {
        try checkNewID(id)
        let job = Job(id: id, driver: driver, autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: speed, control: control,
                      emit: emit, onDismissed: { [weak self] id in await self?.remove(id) })
        jobs.insert(job, at: 0)
        await job.start()
        return job
    }

    public func job(_ id: String) throws(JobError) -> Job {
        guard let job = jobs.first(where: { $0.id == id }) else { throw .notFound }
        return job
    }

    /// A block job by id, as the block-job-* commands look it up.
    public func blockJob(_ id: String) throws(JobError) -> Job {
        guard let job = jobs.first(where: { $0.id == id && $0.driver.isBlockJob }) else { throw .blockJobNotFound(id) }
        return job
    }

    public var all: [Job] { jobs }

    private func remove(_ id: String) {
        jobs.removeAll { $0.id == id }
    }
}
