import StrataRuntime

/// Every job of a daemon, by id (QEMU's job list), on the control executor.
public actor JobManager {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    private let control: QueueExecutor
    private let emit: @Sendable (JobEvent) async -> Void
    /// Newest first, as QEMU lists them.
    private var jobs: [Job] = []
    /// The nodes each job uses, and how (the op blockers' rows); released when the job concludes.
    private var claims: [(job: Job, node: String, role: JobNodeRole)] = []

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
                      speed: UInt64 = 0, uses: [(node: String, role: JobNodeRole)] = []) async throws(JobError) -> Job {
        try checkNewID(id)
        let operation: NodeOperation = switch driver.type {
        case .create: .create
        case .commit: .commit
        case .mirror: .mirror
        case .backup: .backup
        case .stream: .stream
        }
        for use in uses { try await check(operation, on: use.node) }
        let emit = self.emit
        let job = Job(id: id, driver: driver, autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: speed, control: control,
                      emit: { [weak self] event in
                          await emit(event)
                          if event.name == "JOB_STATUS_CHANGE", case .object(let fields) = event.data,
                             fields.contains(where: { $0.0 == "status" && $0.1 == .string(JobStatus.concluded.rawValue) }) {
                              await self?.release(id)
                          }
                      },
                      onDismissed: { [weak self] id in await self?.remove(id) })
        jobs.insert(job, at: 0)
        claims += uses.map { (job, $0.node, $0.role) }
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

    /// Refuses `operation` on `node` while a job uses the node in a role the op-blocker table
    /// does not allow it for.
    public func check(_ operation: NodeOperation, on node: String) async throws(JobError) {
        for claim in claims where claim.node == node && !OpBlockers.allows(operation, whileUsedAs: claim.role) {
            throw JobError("Node '\(node)' is busy: block device is in use by block job: \(claim.job.type.rawValue) (job '\(claim.job.id)', "
                           + "\(claim.role.rawValue))")
        }
    }

    /// Cancels every job and waits until each has concluded (QEMU's job_cancel_sync_all at exit),
    /// so none touches the graph after the daemon shuts it down.
    public func cancelAllAndWait() async {
        for job in jobs where JobTables.accepts(.cancel, in: await job.status) { try? await job.cancel(force: true) }
        for job in jobs {
            // Bounded: a job's next pause point is at most one chunk of I/O away.
            for _ in 0..<3000 {
                let status = await job.status
                if status == .concluded || status == .null { break }
                await control.sleep(untilNs: MonotonicClock.now() + 10_000_000)
            }
        }
    }

    private func release(_ id: String) {
        claims.removeAll { $0.job.id == id }
    }

    private func remove(_ id: String) {
        jobs.removeAll { $0.id == id }
    }
}
