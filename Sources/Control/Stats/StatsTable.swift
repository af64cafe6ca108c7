import StrataFormatting
import StrataGraph

/// A statistics sample as the table `strata stats` shows: per node, requests and MB per second,
/// errors, and read and write latency percentiles.
public enum StatsTable {
    public static func lines(sample: [String: JSONValue]) -> [String] {
        let intervalMs: Double
        switch sample["interval-ms"] {
        case .double(let value)?: intervalMs = value
        case .int(let value)?: intervalMs = Double(value)
        default: intervalMs = 0
        }
        let seconds = max(intervalMs / 1000, 1e-9)
        guard case .array(let nodes)? = sample["nodes"] else { return ["(no nodes)"] }
        var rows: [[String]] = []
        for case .object(let node) in nodes {
            func count(_ key: String) -> Double {
                if case .int(let value)? = node[key] { return Double(value) }
                return 0
            }
            func latency(_ key: String, _ percentile: String) -> String {
                guard case .object(let values)? = node[key], case .int(let ns)? = values[percentile] else { return "-" }
                return microseconds(ns)
            }
            let name: String = if case .string(let text)? = node["node-name"] { text } else { "?" }
            let driver: String = if case .string(let text)? = node["driver"] { text } else { "?" }
            rows.append([
                name, driver,
                DecimalText.grouped(Int((count("rd_operations") / seconds).rounded())),
                DecimalText.grouped(Int((count("wr_operations") / seconds).rounded())),
                DecimalText.fixed(count("rd_bytes") / seconds / 1e6, 1), DecimalText.fixed(count("wr_bytes") / seconds / 1e6, 1),
                DecimalText.grouped(Int(count("failed_operations") + count("invalid_operations"))),
                latency("rd_latency_ns", "p50"), latency("rd_latency_ns", "p99"), latency("rd_latency_ns", "p99.9"),
                latency("wr_latency_ns", "p50"), latency("wr_latency_ns", "p99"), latency("wr_latency_ns", "p99.9"),
            ])
        }
        let header = ["node", "driver", "read/s", "write/s", "rd MB/s", "wr MB/s", "errors",
                      "rd p50", "rd p99", "rd p99.9", "wr p50", "wr p99", "wr p99.9"]
        return TextTable.lines(header: header, rows: rows) + ["latencies in us, over \(DecimalText.fixed(intervalMs, 1)) ms"]
    }

    static func microseconds(_ ns: Int64) -> String {
        ns < 10_000 ? DecimalText.fixed(Double(ns) / 1000, 1) : DecimalText.grouped(Int(ns / 1000))
    }
}
