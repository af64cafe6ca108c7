import StrataFormatting
import StrataGraph
import StrataJobs

/// Jobs over QMP: blockdev-create, query-jobs, the job-* verbs and the older block-job-* forms.
enum JobCommands {
    static let all: [QMPCommand] = [
        QMPCommand("blockdev-create") { monitor, arguments in
            let id = try arguments.string("job-id")
            let options = try arguments.object("options")
            try arguments.finish()
            let parsed: BlockdevCreateOptions
            do throws(JobError) { parsed = try BlockdevCreateOptions(options) } catch { throw QMPError(error) }
            // QEMU's blockdev-create job waits for job-dismiss (JOB_MANUAL_DISMISS).
            let targets: [String] = switch parsed {
            case .file: []
            case .qcow2(let file, let dataFile, _): [file] + (dataFile.map { [$0] } ?? [])
            }
            try await monitor.runJob { jobs throws(JobError) in
                try await jobs.start(id: id, driver: BlockdevCreateJob(options: parsed, controller: monitor.daemon.engine.controller),
                                     autoFinalize: true, autoDismiss: false, uses: targets.map { ($0, .createTarget) })
            }
            return .emptyObject
        },
        QMPCommand("query-jobs") { monitor, arguments in
            try arguments.finish()
            var infos: [OrderedJSON] = []
            for job in await monitor.jobs.all {
                let info = await job.snapshot()
                var fields: [(String, OrderedJSON)] = [
                    ("id", .string(info.id)), ("type", .string(info.type.rawValue)), ("status", .string(info.status.rawValue)),
                    ("current-progress", .uint(info.currentProgress)), ("total-progress", .uint(info.totalProgress)),
                ]
                if let error = info.error { fields.append(("error", .string(error))) }
                infos.append(QDictOrder.object(fields))
            }
            return .array(infos)
        },
        QMPCommand("query-block-jobs") { monitor, arguments in
            try arguments.finish()
            var infos: [OrderedJSON] = []
            for job in await monitor.jobs.all {
                let info = await job.snapshot()
                guard info.isBlockJob else { continue }
                var fields: [(String, OrderedJSON)] = [
                    ("type", .string(info.type.rawValue)), ("device", .string(info.id)), ("len", .uint(info.totalProgress)),
                    ("offset", .uint(info.currentProgress)), ("busy", .bool(info.isBusy)), ("paused", .bool(info.isPaused)),
                    ("speed", .uint(info.speed)), ("io-status", .string(info.ioStatus)), ("ready", .bool(info.isReady)),
                    ("status", .string(info.status.rawValue)), ("auto-finalize", .bool(info.autoFinalize)),
                    ("auto-dismiss", .bool(info.autoDismiss)),
                ]
                if let error = info.error { fields.append(("error", .string(error))) }
                infos.append(QDictOrder.object(fields))
            }
            return .array(infos)
        },
        verb("job-pause", key: "id") { job throws(JobError) in try await job.pause() },
        verb("job-resume", key: "id") { job throws(JobError) in try await job.resume() },
        verb("job-cancel", key: "id") { job throws(JobError) in try await job.cancel(force: true) },
        verb("job-complete", key: "id") { job throws(JobError) in try await job.complete() },
        verb("job-finalize", key: "id") { job throws(JobError) in try await job.finalize() },
        verb("job-dismiss", key: "id") { job throws(JobError) in try await job.dismiss() },
        verb("block-job-pause", key: "device", blockJob: true) { job throws(JobError) in try await job.pause() },
        verb("block-job-resume", key: "device", blockJob: true) { job throws(JobError) in try await job.resume() },
        verb("block-job-complete", key: "device", blockJob: true) { job throws(JobError) in try await job.complete() },
        verb("block-job-finalize", key: "id", blockJob: true) { job throws(JobError) in try await job.finalize() },
        verb("block-job-dismiss", key: "id", blockJob: true) { job throws(JobError) in try await job.dismiss() },
        QMPCommand("block-job-cancel") { monitor, arguments in
            let id = try arguments.string("device")
            let force = try arguments.optionalBool("force") ?? false
            try arguments.finish()
            try await monitor.runJob { jobs throws(JobError) in try await jobs.blockJob(id).cancel(force: force) }
            return .emptyObject
        },
        QMPCommand("block-job-set-speed") { monitor, arguments in
            let id = try arguments.string("device")
            let speed = try arguments.integer("speed")
            try arguments.finish()
            guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
            try await monitor.runJob { jobs throws(JobError) in try await jobs.blockJob(id).setSpeed(UInt64(speed)) }
            return .emptyObject
        },
    ]

    /// A command that applies one verb to the job named by `key`.
    private static func verb(_ name: String, key: String, blockJob: Bool = false,
                             _ apply: @escaping @Sendable (Job) async throws(JobError) -> Void) -> QMPCommand {
        QMPCommand(name) { monitor, arguments in
            let id = try arguments.string(key)
            try arguments.finish()
            try await monitor.runJob { jobs throws(JobError) in try await apply(blockJob ? jobs.blockJob(id) : jobs.job(id)) }
            return .emptyObject
        }
    }
}

extension QMPError {
    init(_ error: JobError) {
        self.init(error.description, class: error.errorClass == .deviceNotActive ? .deviceNotActive : .genericError)
    }
}

extension QMPMonitor {
    /// Refuses `operation` on `node` while a job uses it (OpBlockers).
    func checkBlockers(_ operation: NodeOperation, on node: String) async throws(QMPError) {
        do { try await jobs.check(operation, on: node) } catch { throw QMPError(error) }
    }

    /// Runs a job-manager call, with its errors as QMP reports them.
    @discardableResult
    func runJob<T: Sendable>(_ body: @Sendable (JobManager) async throws(JobError) -> T) async throws(QMPError) -> T {
        do { return try await body(jobs) } catch { throw QMPError(error) }
    }
}
