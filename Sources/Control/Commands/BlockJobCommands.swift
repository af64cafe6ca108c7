import StrataFormatting
import StrataGraph
import StrataJobs

/// The block jobs QMP starts: block-stream, block-commit, blockdev-mirror and blockdev-backup.
enum BlockJobCommands {
    static let all: [QMPCommand] = [
        QMPCommand("blockdev-backup") { monitor, arguments in
            let backup = try BackupRequest.parse(&arguments)
            try await backup.start(monitor)
            return .emptyObject
        },
        QMPCommand("block-stream") { monitor, arguments in
            let id = try arguments.optionalString("job-id") ?? ""
            let device = try arguments.string("device")
            let baseFile = try arguments.optionalString("base")
            let baseNode = try arguments.optionalString("base-node")
            let backingFile = try arguments.optionalString("backing-file")
            let bottom = try arguments.optionalString("bottom")
            let speed = try arguments.optionalInteger("speed") ?? 0
            let onError = try Self.policy(&arguments, "on-error")
            let filterName = try arguments.optionalString("filter-node-name")
            let autoFinalize = try arguments.optionalBool("auto-finalize") ?? true
            let autoDismiss = try arguments.optionalBool("auto-dismiss") ?? true
            try arguments.finish()
            guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
            let controller = monitor.daemon.engine.controller
            let model = await controller.model
            var plan = try StreamPlanning.plan(top: device, baseFile: baseFile, baseNode: baseNode, bottom: bottom,
                                               backingFile: backingFile, filterName: filterName, model: model)
            plan.onError = onError
            try await monitor.runJob { [plan] jobs throws(JobError) in
                try await jobs.start(id: id, driver: BlockStreamJob(plan: plan, controller: controller),
                                     autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: UInt64(speed),
                                     uses: [(plan.top, .streamTop)] + plan.intermediates.map { ($0, .streamIntermediate) })
            }
            return .emptyObject
        },
        QMPCommand("block-commit") { monitor, arguments in
            let id = try arguments.optionalString("job-id") ?? ""
            let device = try arguments.string("device")
            let baseNode = try arguments.optionalString("base-node")
            let baseFile = try arguments.optionalString("base")
            let topNode = try arguments.optionalString("top-node")
            let topFile = try arguments.optionalString("top")
            let backingFile = try arguments.optionalString("backing-file")
            let speed = try arguments.optionalInteger("speed") ?? 0
            let onError = try Self.policy(&arguments, "on-error")
            let filterName = try arguments.optionalString("filter-node-name")
            let autoFinalize = try arguments.optionalBool("auto-finalize") ?? true
            let autoDismiss = try arguments.optionalBool("auto-dismiss") ?? true
            try arguments.finish()
            guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
            let controller = monitor.daemon.engine.controller
            let model = await controller.model
            let planned = try CommitPlanning.plan(device: device, topNode: topNode, topFile: topFile, baseNode: baseNode, baseFile: baseFile,
                                                  backingFile: backingFile, filterName: filterName, model: model)
            switch planned {
            case .intermediate(var plan):
                plan.onError = onError
                try await monitor.runJob { [plan] jobs throws(JobError) in
                    try await jobs.start(id: id, driver: BlockCommitJob(plan: plan, controller: controller),
                                         autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: UInt64(speed),
                                         uses: plan.committed.map { ($0, .commitSource) } + [(plan.base, .commitTarget), (plan.overlay, .commitOverlay)])
                }
            case .active(var plan):
                // commit_active_start hands on-error to the mirror for source and target alike.
                plan.onSourceError = onError
                plan.onTargetError = onError
                try await monitor.runJob { [plan] jobs throws(JobError) in
                    try await jobs.start(id: id, driver: BlockMirrorJob(plan: plan, controller: controller),
                                         autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: UInt64(speed),
                                         uses: (plan.committedLayers ?? []).map { ($0, .commitSource) } + [(plan.target, .commitTarget)])
                }
            }
            return .emptyObject
        },
        QMPCommand("blockdev-mirror") { monitor, arguments in
            let id = try arguments.optionalString("job-id") ?? ""
            let device = try arguments.string("device")
            let target = try arguments.string("target")
            let replaces = try arguments.optionalString("replaces")
            let syncText = try arguments.string("sync")
            let speed = try arguments.optionalInteger("speed") ?? 0
            let granularity = try arguments.optionalInteger("granularity") ?? 65536
            let bufferBytes = try arguments.optionalInteger("buf-size") ?? (1 << 20)
            let onSourceError = try Self.policy(&arguments, "on-source-error")
            let onTargetError = try Self.policy(&arguments, "on-target-error")
            let filterName = try arguments.optionalString("filter-node-name")
            let copyModeText = try arguments.optionalString("copy-mode") ?? "background"
            let autoFinalize = try arguments.optionalBool("auto-finalize") ?? true
            let autoDismiss = try arguments.optionalBool("auto-dismiss") ?? true
            try arguments.finish()
            guard let sync = BlockMirrorJob.Sync(rawValue: syncText) else {
                throw QMPError("Parameter 'sync' does not accept value '\(syncText)'")
            }
            guard let copyMode = BlockMirrorJob.CopyMode(rawValue: copyModeText) else {
                throw QMPError("Parameter 'copy-mode' does not accept value '\(copyModeText)'")
            }
            guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
            guard (512...(64 << 20)).contains(granularity) else { throw QMPError("Parameter 'granularity' expects a value in range [512B, 64MB]") }
            guard granularity & (granularity - 1) == 0 else { throw QMPError("Granularity must be a power of 2") }
            guard bufferBytes > 0 else { throw QMPError("buf-size must be greater than zero") }
            let controller = monitor.daemon.engine.controller
            let model = await controller.model
            guard model.nodes[device] != nil else { throw QMPError("Cannot find device='\(device)' nor node-name='\(device)'") }
            guard model.nodes[target] != nil else { throw QMPError("Cannot find device='\(target)' nor node-name='\(target)'") }
            guard target != device else { throw QMPError("Can't mirror node into itself") }
            if let user = model.users(of: target).first { throw QMPError("Node '\(target)' is busy: node is used as \(user)") }
            var plan = BlockMirrorJob.Plan(source: device, target: target, replaces: replaces ?? device, sync: sync,
                                           granularity: UInt64(granularity), bufferBytes: Int(max(bufferBytes, granularity)),
                                           copyMode: copyMode, filterName: filterName)
            plan.onSourceError = onSourceError
            plan.onTargetError = onTargetError
            try await monitor.runJob { [plan] jobs throws(JobError) in
                try await jobs.start(id: id, driver: BlockMirrorJob(plan: plan, controller: controller),
                                     autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: UInt64(speed),
                                     uses: [(device, .mirrorSource), (target, .mirrorTarget)])
            }
            return .emptyObject
        },
    ]

    /// A BlockdevOnError argument (default report).
    static func policy(_ arguments: inout QMPArguments, _ key: String) throws(QMPError) -> JobErrorPolicy {
        guard let text = try arguments.optionalString(key) else { return .report }
        guard let policy = JobErrorPolicy(rawValue: text) else { throw QMPError("Parameter '\(key)' does not accept value '\(text)'") }
        return policy
    }
}

/// block-commit's arguments against the graph, with QEMU's checks and texts.
enum CommitPlanning {
    /// An intermediate commit, or one of the active layer (a mirror into the base).
    enum Planned {
        case intermediate(BlockCommitJob.Plan)
        case active(BlockMirrorJob.Plan)
    }

    static func plan(device: String, topNode: String?, topFile: String?, baseNode: String?, baseFile: String?, backingFile: String?,
                     filterName: String?, model: GraphModel) throws(QMPError) -> Planned {
        guard model.nodes[device] != nil else { throw QMPError("Device '\(device)' not found", class: .deviceNotFound) }
        if baseFile != nil && baseNode != nil { throw QMPError("'base' and 'base-node' cannot be specified at the same time") }
        if topFile != nil && topNode != nil { throw QMPError("'top' and 'top-node' cannot be specified at the same time") }
        var chain = [device]
        while chain.count < 1024, let next = model.nodes[chain.last!]?.children.first(where: { $0.role == .backing })?.nodeName {
            chain.append(next)
        }
        func index(node: String?, file: String?, what: String) throws(QMPError) -> Int? {
            if let node {
                guard let found = chain.firstIndex(of: node) else { throw QMPError("'\(node)' is not in this backing file chain") }
                return found
            }
            if let file {
                guard let found = chain.firstIndex(where: { QMPMonitor.filename(of: $0, model: model) == file }) else {
                    throw QMPError("\(what) '\(file)' not found")
                }
                return found
            }
            return nil
        }
        let top = try index(node: topNode, file: topFile, what: "Top image file") ?? 0
        let base = try index(node: baseNode, file: baseFile, what: "Base") ?? chain.count - 1
        guard base > top else { throw QMPError("'\(chain[base])' is not in this backing file chain") }
        let baseName = chain[base]
        guard top > 0 else {
            // The active layer: QEMU's commit_active_start, a mirror into the base that moves the
            // device's users to the base at job-complete.
            return .active(BlockMirrorJob.Plan(source: device, target: baseName, replaces: device, sync: .top, granularity: 65536,
                                               bufferBytes: 1 << 20, copyMode: .background, filterName: filterName,
                                               committedLayers: Array(chain[0..<base])))
        }
        return .intermediate(BlockCommitJob.Plan(overlay: chain[top - 1], top: chain[top], base: baseName, committed: Array(chain[top..<base]),
                                                 backingFile: backingFile ?? QMPMonitor.filename(of: baseName, model: model),
                                                 backingFormat: model.nodes[baseName]?.driver ?? "raw", filterName: filterName))
    }
}

/// block-stream's arguments against the graph, with QEMU's checks and texts.
enum StreamPlanning {
    static func plan(top: String, baseFile: String?, baseNode: String?, bottom: String?, backingFile: String?,
                     filterName: String?, model: GraphModel) throws(QMPError) -> BlockStreamJob.Plan {
        guard model.nodes[top] != nil else { throw QMPError("Cannot find device='\(top)' nor node-name='\(top)'") }
        if baseFile != nil && baseNode != nil { throw QMPError("'base' and 'base-node' cannot be specified at the same time") }
        if bottom != nil && baseFile != nil { throw QMPError("'base' and 'bottom' cannot be specified at the same time") }
        if bottom != nil && baseNode != nil { throw QMPError("'bottom' and 'base-node' cannot be specified at the same time") }
        // The chain below top, top first.
        var chain = [top]
        while chain.count < 1024, let next = model.nodes[chain.last!]?.children.first(where: { $0.role == .backing })?.nodeName {
            chain.append(next)
        }
        var baseIndex: Int?
        if let baseNode {
            guard model.nodes[baseNode] != nil else { throw QMPError("Cannot find device='\(baseNode)' nor node-name='\(baseNode)'") }
            guard let index = chain.firstIndex(of: baseNode), index > 0 else {
                throw QMPError("Node '\(baseNode)' is not a backing image of '\(top)'")
            }
            baseIndex = index
        } else if let baseFile {
            guard let index = chain.indices.dropFirst().first(where: { QMPMonitor.filename(of: chain[$0], model: model) == baseFile }) else {
                throw QMPError("Can't find '\(baseFile)' in the backing chain")
            }
            baseIndex = index
        } else if let bottom {
            guard model.nodes[bottom] != nil else { throw QMPError("Cannot find device='\(bottom)' nor node-name='\(bottom)'") }
            guard let index = chain.firstIndex(of: bottom), index > 0 else {
                throw QMPError("Node '\(bottom)' is not in the backing chain of '\(top)'")
            }
            baseIndex = index + 1 < chain.count ? index + 1 : nil
        }
        let intermediates = Array(chain[1..<(baseIndex ?? chain.count)])
        let base = baseIndex.map { chain[$0] }
        let format = base.flatMap { model.nodes[$0]?.driver }
        let name = backingFile ?? base.map { QMPMonitor.filename(of: $0, model: model) }
        return BlockStreamJob.Plan(top: top, base: base, bottom: intermediates.last, backingFile: name, backingFormat: format,
                                   filterName: filterName, intermediates: intermediates)
    }
}

/// blockdev-backup's arguments, checked against the graph with QEMU's texts; also a transaction action.
struct BackupRequest: Sendable {
    let id: String
    let device: String
    let target: String
    let sync: BlockBackupJob.Sync
    let speed: UInt64
    let bitmapName: String?
    let bitmapMode: BlockBackupJob.BitmapMode?
    let filterName: String?
    let onSourceError: JobErrorPolicy
    let onTargetError: JobErrorPolicy
    let autoFinalize: Bool
    let autoDismiss: Bool

    static func parse(_ arguments: inout QMPArguments) throws(QMPError) -> BackupRequest {
        let id = try arguments.optionalString("job-id") ?? ""
        let device = try arguments.string("device")
        let target = try arguments.string("target")
        let syncText = try arguments.string("sync")
        let speed = try arguments.optionalInteger("speed") ?? 0
        let bitmapName = try arguments.optionalString("bitmap")
        let modeText = try arguments.optionalString("bitmap-mode")
        let compress = try arguments.optionalBool("compress") ?? false
        let onSourceError = try BlockJobCommands.policy(&arguments, "on-source-error")
        let onTargetError = try BlockJobCommands.policy(&arguments, "on-target-error")
        let filterName = try arguments.optionalString("filter-node-name")
        let autoFinalize = try arguments.optionalBool("auto-finalize") ?? true
        let autoDismiss = try arguments.optionalBool("auto-dismiss") ?? true
        _ = try arguments.optionalObject("x-perf")
        try arguments.finish()
        guard let sync = BlockBackupJob.Sync(rawValue: syncText) else { throw QMPError("Parameter 'sync' does not accept value '\(syncText)'") }
        var mode: BlockBackupJob.BitmapMode?
        if let modeText {
            guard let parsed = BlockBackupJob.BitmapMode(rawValue: modeText) else {
                throw QMPError("Parameter 'bitmap-mode' does not accept value '\(modeText)'")
            }
            mode = parsed
        }
        guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
        guard !compress else { throw QMPError("compress=true is not supported by Strata's backup yet") }
        return BackupRequest(id: id, device: device, target: target, sync: sync, speed: UInt64(speed), bitmapName: bitmapName,
                             bitmapMode: mode, filterName: filterName, onSourceError: onSourceError, onTargetError: onTargetError,
                             autoFinalize: autoFinalize, autoDismiss: autoDismiss)
    }

    /// QEMU's do_backup_common checks, in its order; the plan they leave.
    func plan(_ controller: GraphController) async throws(QMPError) -> BlockBackupJob.Plan {
        let model = await controller.model
        guard model.nodes[device] != nil else { throw QMPError("Cannot find device='\(device)' nor node-name='\(device)'") }
        guard model.nodes[target] != nil else { throw QMPError("Cannot find device='\(target)' nor node-name='\(target)'") }
        guard target != device else { throw QMPError("Source and target cannot be the same") }
        var mode = bitmapMode
        if sync == .incremental {
            if let mode, mode != .onSuccess { throw QMPError("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'") }
            mode = .onSuccess
        }
        if (sync == .incremental || sync == .bitmap) && bitmapName == nil {
            throw QMPError("must provide a valid bitmap name for '\(sync.rawValue)' sync mode")
        }
        var bitmap: DirtyBitmap?
        if let bitmapName {
            guard let found = await controller.dirtyBitmap(node: device, name: bitmapName) else {
                throw QMPError("Bitmap '\(bitmapName)' could not be found")
            }
            guard mode != nil else { throw QMPError("Bitmap sync mode must be given when providing a bitmap") }
            if let refusal = found.refusal() { throw QMPError(refusal) }
            if sync == .none { throw QMPError("sync mode 'none' does not produce meaningful bitmap outputs") }
            if mode == .never && sync != .bitmap && sync != .incremental {
                throw QMPError("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '\(sync.rawValue)'")
            }
            bitmap = found
        } else if bitmapMode != nil {
            throw QMPError("Cannot specify bitmap sync mode without a bitmap")
        }
        let sourceSize: UInt64
        let targetSize: UInt64
        do {
            sourceSize = try await controller.state(of: device).sizeBytes
            targetSize = try await controller.state(of: target).sizeBytes
        } catch {
            throw QMPError("\(error)")
        }
        guard sourceSize == targetSize else { throw QMPError("Source and target image have different sizes") }
        var plan = BlockBackupJob.Plan(source: device, target: target, sync: sync, bitmap: bitmap, bitmapMode: mode ?? .onSuccess,
                                       filterName: filterName)
        plan.onSourceError = onSourceError
        plan.onTargetError = onTargetError
        return plan
    }

    func start(_ monitor: isolated QMPMonitor, transaction: JobTransaction? = nil) async throws(QMPError) {
        let controller = monitor.daemon.engine.controller
        let plan = try await plan(controller)
        try await monitor.runJob { [plan] jobs throws(JobError) in
            try await jobs.start(id: id, driver: BlockBackupJob(plan: plan, controller: controller), autoFinalize: autoFinalize,
                                 autoDismiss: autoDismiss, speed: speed, uses: [(device, .backupSource), (target, .backupTarget)],
                                 transaction: transaction)
        }
    }
}
