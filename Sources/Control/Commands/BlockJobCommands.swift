import StrataFormatting
import StrataGraph
import StrataJobs

/// The block jobs QMP starts: block-stream and block-commit.
enum BlockJobCommands {
    static let all: [QMPCommand] = [
        QMPCommand("block-stream") { monitor, arguments in
            let id = try arguments.optionalString("job-id") ?? ""
            let device = try arguments.string("device")
            let baseFile = try arguments.optionalString("base")
            let baseNode = try arguments.optionalString("base-node")
            let backingFile = try arguments.optionalString("backing-file")
            let bottom = try arguments.optionalString("bottom")
            let speed = try arguments.optionalInteger("speed") ?? 0
            let onError = try arguments.optionalString("on-error") ?? "report"
            let filterName = try arguments.optionalString("filter-node-name")
            let autoFinalize = try arguments.optionalBool("auto-finalize") ?? true
            let autoDismiss = try arguments.optionalBool("auto-dismiss") ?? true
            try arguments.finish()
            guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
            guard onError == "report" else { throw QMPError("on-error=\(onError) is not supported by Strata's stream yet; use report") }
            let controller = monitor.daemon.engine.controller
            let model = await controller.model
            let plan = try StreamPlanning.plan(top: device, baseFile: baseFile, baseNode: baseNode, bottom: bottom,
                                               backingFile: backingFile, filterName: filterName, model: model)
            try await monitor.runJob { jobs throws(JobError) in
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
            let onError = try arguments.optionalString("on-error") ?? "report"
            let filterName = try arguments.optionalString("filter-node-name")
            let autoFinalize = try arguments.optionalBool("auto-finalize") ?? true
            let autoDismiss = try arguments.optionalBool("auto-dismiss") ?? true
            try arguments.finish()
            guard speed >= 0 else { throw QMPError("Parameter 'speed' expects a non-negative value") }
            guard onError == "report" else { throw QMPError("on-error=\(onError) is not supported by Strata's commit yet; use report") }
            let controller = monitor.daemon.engine.controller
            let model = await controller.model
            let plan = try CommitPlanning.plan(device: device, topNode: topNode, topFile: topFile, baseNode: baseNode, baseFile: baseFile,
                                               backingFile: backingFile, filterName: filterName, model: model)
            try await monitor.runJob { jobs throws(JobError) in
                try await jobs.start(id: id, driver: BlockCommitJob(plan: plan, controller: controller),
                                     autoFinalize: autoFinalize, autoDismiss: autoDismiss, speed: UInt64(speed),
                                     uses: plan.committed.map { ($0, .commitSource) } + [(plan.base, .commitTarget), (plan.overlay, .commitOverlay)])
            }
            return .emptyObject
        },
    ]
}

/// block-commit's arguments against the graph, with QEMU's checks and texts.
enum CommitPlanning {
    static func plan(device: String, topNode: String?, topFile: String?, baseNode: String?, baseFile: String?, backingFile: String?,
                     filterName: String?, model: GraphModel) throws(QMPError) -> BlockCommitJob.Plan {
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
        guard top > 0 else {
            throw QMPError("Strata cannot commit the active layer yet (it needs the mirror job): give 'top-node' below '\(device)'")
        }
        guard base > top else { throw QMPError("'\(chain[base])' is not in this backing file chain") }
        let baseName = chain[base]
        return BlockCommitJob.Plan(overlay: chain[top - 1], top: chain[top], base: baseName, committed: Array(chain[top..<base]),
                                   backingFile: backingFile ?? QMPMonitor.filename(of: baseName, model: model),
                                   backingFormat: model.nodes[baseName]?.driver ?? "raw", filterName: filterName)
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
