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
                      speed: UInt64 = 0, uses: [(node: String, role: JobNodeRole)] = [],
                      transaction: JobTransaction? = nil) async throws(JobError) -> Job {
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
                      transaction: transaction, emit: { [weak self] event in
                          // The job's nodes are free once its work is committed or undone: before a
                          // client hears BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED (and may delete
                          // them, as QEMU lets it), or `concluded` for jobs without those events.
                          if Self.endsUse(event) { await self?.release(id) }
                          await emit(event)
                      },
                      onDismissed: { [weak self] id in await self?.remove(id) })
        jobs.insert(job, at: 0)
        claims += uses.map { (job, $0.node, $0.role) }
        await transaction?.add(job)
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

    /// The READY mirrors an atomic cancel would stop, or why it cannot.
    public func mirrorsToCancelTogether(_ ids: [String]) async throws(JobError) -> [(Job, BlockMirrorJob)] {
        var mirrors: [(Job, BlockMirrorJob)] = []
        for id in ids {
            let job = try blockJob(id)
            guard let mirror = job.driver as? BlockMirrorJob, await job.status == .ready, mirror.readyParts != nil else {
                throw JobError("Job '\(id)' is not a READY mirror; only READY mirrors can be cancelled together")
            }
            guard !mirrors.contains(where: { $0.0 === job }) else { throw JobError("Job '\(id)' is named twice") }
            mirrors.append((job, mirror))
        }
        return mirrors
    }

    /// Strata's atomic block-job-cancel (the roadmap's, which QEMU lacks): the READY mirrors
    /// `ids` all stop at one cut of the guests' writes, so their targets together hold a state
    /// the guests' disks really had. Every filter turns write-blocking (each completed write is in
    /// its target) and a barrier waits out older writes; then every filter's gate closes and the
    /// writes inside finish: that is the cut. Each job copies what is still dirty and flushes
    /// (its source no longer changes), then the filters let the held writes on to the sources
    /// only, and each job ends as block-job-cancel ends a READY mirror: BLOCK_JOB_COMPLETED,
    /// no pivot. A write a target holds was issued before the cut, and so was every write that
    /// completed before it was issued: held writes complete only after every gate closed.
    public func cancelMirrorsAtomically(_ ids: [String]) async throws(JobError) {
        let mirrors = try await mirrorsToCancelTogether(ids)
        guard let controller = mirrors.first?.1.controller else { return }
        let parts = mirrors.compactMap { $0.1.readyParts }
        for part in parts { part.filter.startWriteBlocking(targets: part.targets) }
        await controller.barrier()
        for part in parts { part.filter.closeGate() }
        while !parts.allSatisfy(\.filter.isQuiet) { await control.sleep(untilNs: MonotonicClock.now() + 200_000) }
        for (_, mirror) in mirrors { mirror.requestStopAtCut() }
        while !mirrors.allSatisfy({ $0.1.hasStoppedAtCut }) { await control.sleep(untilNs: MonotonicClock.now() + 500_000) }
        for part in parts { part.filter.detachAndOpenGate() }
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

    static func endsUse(_ event: JobEvent) -> Bool {
        if event.name == "BLOCK_JOB_COMPLETED" || event.name == "BLOCK_JOB_CANCELLED" { return true }
        guard event.name == "JOB_STATUS_CHANGE", case .object(let fields) = event.data else { return false }
        return fields.contains { $0.0 == "status" && $0.1 == .string(JobStatus.concluded.rawValue) }
    }

    private func release(_ id: String) {
        claims.removeAll { $0.job.id == id }
    }

    private func remove(_ id: String) {
        jobs.removeAll { $0.id == id }
    }
}
