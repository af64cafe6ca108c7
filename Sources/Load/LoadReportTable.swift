import StrataFormatting

/// The human table `strata bench` prints by default.
public enum LoadReportTable {
    public static func render(_ report: LoadReport) -> String {
        var lines: [String] = []
        for line in report.graph { lines.append("graph: \(line)") }
        lines.append("workload: \(report.mode) bs=\(report.blockSizeBytes) depth=\(report.queueDepth) queues=\(report.queueCount) seed=\(report.seed)")
        lines.append("")
        let header = ["queue", "ops", "IOPS", "MiB/s", "failed", "p50 us", "p99 us", "p99.9 us", "max us"]
        var rows: [[String]] = []
        for queue in report.queues {
            rows.append(["\(queue.queue)", "\(queue.ops)", DecimalText.fixed(queue.iops, 0),
                         DecimalText.fixed(Double(queue.bytes) / report.seconds / 1_048_576, 1), "\(queue.failed)",
                         micros(queue.latencyNs.p50), micros(queue.latencyNs.p99), micros(queue.latencyNs.p999), micros(queue.latencyNs.max)])
        }
        rows.append(["all", "\(report.ops)", DecimalText.fixed(report.iops, 0), DecimalText.fixed(report.bandwidthMiBps, 1), "\(report.failed)",
                     micros(report.latencyNs.p50), micros(report.latencyNs.p99), micros(report.latencyNs.p999), micros(report.latencyNs.max)])
        lines.append(contentsOf: TextTable.lines(header: header, rows: rows))
        lines.append("")
        lines.append("seconds \(DecimalText.fixed(report.seconds, 3))  CPU ns/op \(DecimalText.fixed(report.cpuNsPerOp, 1))  lost \(report.lost)  verify failures \(report.verifyFailures)")
        if !report.edits.isEmpty {
            lines.append("")
            let editRows = report.edits.map { edit in
                [DecimalText.fixed(edit.atSeconds, 2), "\(edit.version)", micros(edit.applyNs), micros(edit.maxInFlightLatencyNs),
                 "\(edit.requestsInFlightAcross)", edit.error ?? "ok"]
            }
            lines.append(contentsOf: TextTable.lines(header: ["edit at s", "version", "apply us", "max in-flight us", "in flight", "result"], rows: editRows))
        }
        return lines.joined(separator: "\n")
    }

    static func micros(_ ns: UInt64) -> String { DecimalText.fixed(Double(ns) / 1000, 1) }
}
