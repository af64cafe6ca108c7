import StrataFormatting
import StrataGraph
import StrataJobs

/// The block jobs QMP starts: block-stream.
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
    ]
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
