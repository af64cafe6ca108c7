import StrataDevices

/// The human table `strata bench` prints by default.
enum ReportTable {
    static func render(_ report: LoadReport) -> String {
        var lines: [String] = []
        for line in report.graph { lines.append("graph: \(line)") }
        lines.append("workload: \(report.mode) bs=\(report.blockSizeBytes) depth=\(report.queueDepth) queues=\(report.queueCount) seed=\(report.seed)")
        lines.append("")
        let header = ["queue", "ops", "IOPS", "MiB/s", "failed", "p50 us", "p99 us", "p99.9 us", "max us"]
        var rows: [[String]] = []
        for queue in report.queues {
            rows.append(["\(queue.queue)", "\(queue.ops)", fixed(queue.iops, 0),
                         fixed(Double(queue.bytes) / report.seconds / 1_048_576, 1), "\(queue.failed)",
                         micros(queue.latencyNs.p50), micros(queue.latencyNs.p99), micros(queue.latencyNs.p999), micros(queue.latencyNs.max)])
        }
        rows.append(["all", "\(report.ops)", fixed(report.iops, 0), fixed(report.bandwidthMiBps, 1), "\(report.failed)",
                     micros(report.latencyNs.p50), micros(report.latencyNs.p99), micros(report.latencyNs.p999), micros(report.latencyNs.max)])
        lines.append(contentsOf: table(header: header, rows: rows))
        lines.append("")
        lines.append("seconds \(fixed(report.seconds, 3))  CPU ns/op \(fixed(report.cpuNsPerOp, 1))  lost \(report.lost)  verify failures \(report.verifyFailures)")
        if !report.edits.isEmpty {
            lines.append("")
            let editRows = report.edits.map { edit in
                [fixed(edit.atSeconds, 2), "\(edit.version)", micros(edit.applyNs), micros(edit.maxInFlightLatencyNs),
                 "\(edit.requestsInFlightAcross)", edit.error ?? "ok"]
            }
            lines.append(contentsOf: table(header: ["edit at s", "version", "apply us", "max in-flight us", "in flight", "result"], rows: editRows))
        }
        return lines.joined(separator: "\n")
    }

    static func table(header: [String], rows: [[String]]) -> [String] {
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { String(repeating: " ", count: widths[$0.offset] - $0.element.count) + $0.element }.joined(separator: "  ")
        }
        return [line(header)] + rows.map(line)
    }

    static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        if digits == 0 { return String(Int64(rounded)) }
        let text = String(rounded)
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        let fraction = parts.count > 1 ? String(parts[1].prefix(digits)) : ""
        return parts[0] + "." + fraction + String(repeating: "0", count: digits - fraction.count)
    }

    static func micros(_ ns: UInt64) -> String { fixed(Double(ns) / 1000, 1) }
}
