import StrataFormatting
import StrataGraph
import StrataRuntime

/// query-blockstats and block-latency-histogram-set, over the accounting every node keeps.
enum StatsCommands {
    static let all: [QMPCommand] = [
        QMPCommand("query-blockstats") { monitor, arguments in
            let queryNodes = try arguments.optionalBool("query-nodes") ?? false
            try arguments.finish()
            // Exports' backends are anonymous, as in qemu-storage-daemon: no device-level entries.
            guard queryNodes else { return .array([]) }
            let controller = monitor.daemon.engine.controller
            let model = await controller.model
            let nowNs = CycleClock.now()
            var entries: [OrderedJSON] = []
            for name in model.nodes.keys.sorted() {
                entries.append(try await blockStats(name, model: model, controller: controller, nowNs: nowNs, depth: 0))
            }
            return .array(entries)
        },
        QMPCommand("block-latency-histogram-set") { monitor, arguments in
            let id = try arguments.string("id")
            let all = try boundaries(&arguments, "boundaries")
            var changes: [AccountedOperation: [UInt64]] = [:]
            for (operation, key) in [(AccountedOperation.read, "boundaries-read"), (.write, "boundaries-write"), (.flush, "boundaries-flush")] {
                if let own = try boundaries(&arguments, key) ?? all { changes[operation] = own }
            }
            try arguments.finish()
            let controller = monitor.daemon.engine.controller
            // QEMU names a device here; every Strata node keeps statistics, so a node name is the id.
            guard let accounting = try? await controller.accounting(of: id) else {
                if await controller.model.nodes[id] != nil { throw QMPError("Node '\(id)' keeps no statistics (accounting is off)") }
                throw QMPError("Device '\(id)' not found")
            }
            for operation in AccountedOperation.histogramClasses {
                guard let values = changes[operation] else { continue }
                let name = operation == .read ? "read" : operation == .write ? "write" : "flush"
                guard values.count <= StatsCells.maximumBoundaries, values.first.map({ $0 > 0 }) ?? true,
                      zip(values, values.dropFirst()).allSatisfy({ $0 < $1 }) else {
                    throw QMPError("Device '\(id)' set \(name) boundaries fail: boundaries must be above 0 and strictly increasing, "
                                   + "at most \(StatsCells.maximumBoundaries)")
                }
            }
            // No boundaries at all removes every histogram, as QEMU's block_latency_histograms_clear.
            await accounting.setCustomHistograms(changes.isEmpty ? [.read: [], .write: [], .flush: []] : changes)
            return .emptyObject
        },
    ]

    private static func boundaries(_ arguments: inout QMPArguments, _ key: String) throws(QMPError) -> [UInt64]? {
        guard let value = arguments.value(key) else { return nil }
        guard case .array(let items) = value else { throw QMPError("Invalid parameter type for '\(key)', expected: array") }
        var numbers: [UInt64] = []
        for item in items {
            guard case .int(let value) = item, let number = UInt64(exactly: value) else {
                throw QMPError("Invalid parameter type for '\(key)', expected: integer")
            }
            numbers.append(number)
        }
        return numbers
    }

    /// QEMU's BlockStats for a node: its statistics, what its driver adds, and its primary child's
    /// as `parent` (the node the data goes down to: `file`, or a filter's filtered child).
    static func blockStats(_ name: String, model: GraphModel, controller: GraphController, nowNs: UInt64, depth: Int) async throws -> OrderedJSON {
        guard let entry = model.nodes[name] else { return .null }
        let snapshot = (try? await controller.statistics(of: name)) ?? nil
        var fields: [(String, OrderedJSON)] = [("node-name", .string(name)), ("stats", deviceStats(snapshot, nowNs: nowNs))]
        if entry.driver == "file" {
            let unmap = snapshot?[.unmap] ?? OperationCounters()
            fields.append(("driver-specific", QDictOrder.object([
                ("driver", .string("file")), ("discard-nb-ok", .uint(unmap.operations)),
                ("discard-nb-failed", .uint(unmap.failed)), ("discard-bytes-ok", .uint(unmap.bytes)),
            ])))
        }
        let primary = entry.children.first { $0.role == .file || $0.role == .filtered }
            ?? entry.children.first { $0.role == .data }
        if let primary, depth < 64 {
            fields.append(("parent", try await blockStats(primary.nodeName, model: model, controller: controller, nowNs: nowNs, depth: depth + 1)))
        }
        return QDictOrder.object(fields)
    }

    /// QEMU's BlockDeviceStats, in its schema order (QDictOrder puts it in QEMU's output order).
    static func deviceStats(_ snapshot: NodeStatsSnapshot?, nowNs: UInt64) -> OrderedJSON {
        let stats = snapshot ?? NodeStatsSnapshot()
        let read = stats[.read]
        let write = stats[.write]
        let flush = stats[.flush]
        let unmap = stats[.unmap]
        var fields: [(String, OrderedJSON)] = [
            ("rd_bytes", .uint(read.bytes)), ("wr_bytes", .uint(write.bytes)), ("unmap_bytes", .uint(unmap.bytes)),
            ("rd_operations", .uint(read.operations)), ("wr_operations", .uint(write.operations)),
            ("flush_operations", .uint(flush.operations)), ("unmap_operations", .uint(unmap.operations)),
            ("rd_total_time_ns", .uint(read.totalTimeNs)), ("wr_total_time_ns", .uint(write.totalTimeNs)),
            ("flush_total_time_ns", .uint(flush.totalTimeNs)), ("unmap_total_time_ns", .uint(unmap.totalTimeNs)),
            ("wr_highest_offset", .uint(stats.highestWriteOffset)),
            ("rd_merged", .uint(read.merged)), ("wr_merged", .uint(write.merged)), ("unmap_merged", .uint(unmap.merged)),
        ]
        if let last = stats.lastCompletionNs { fields.append(("idle_time_ns", .uint(nowNs > last ? nowNs - last : 0))) }
        fields += [
            ("failed_rd_operations", .uint(read.failed)), ("failed_wr_operations", .uint(write.failed)),
            ("failed_flush_operations", .uint(flush.failed)), ("failed_unmap_operations", .uint(unmap.failed)),
            ("invalid_rd_operations", .uint(read.invalid)), ("invalid_wr_operations", .uint(write.invalid)),
            ("invalid_flush_operations", .uint(flush.invalid)), ("invalid_unmap_operations", .uint(unmap.invalid)),
            // Strata always counts invalid and failed requests (QEMU's defaults for a device).
            ("account_invalid", .bool(snapshot != nil)), ("account_failed", .bool(snapshot != nil)),
            ("timed_stats", .array([])),
        ]
        for (operation, key) in [(AccountedOperation.read, "rd_latency_histogram"), (.write, "wr_latency_histogram"), (.flush, "flush_latency_histogram")] {
            guard let histogram = stats.customHistograms[operation] else { continue }
            fields.append((key, QDictOrder.object([
                ("boundaries", .array(histogram.boundaries.map { .uint($0) })), ("bins", .array(histogram.bins.map { .uint($0) })),
            ])))
        }
        return QDictOrder.object(fields)
    }
}
