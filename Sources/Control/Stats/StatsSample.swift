import StrataFormatting
import StrataGraph

/// One line of the statistics stream: per node, what happened since the previous sample.
///
/// `{"timestamp": {"seconds": S, "microseconds": U}, "interval-ms": N, "nodes": [{"node-name":
/// NAME, "driver": D, "rd_operations": ..., "rd_bytes": ..., "failed_operations": ...,
/// "invalid_operations": ..., "rd_latency_ns": {"p50": ..., "p99": ..., "p99.9": ...}, ...}]}`;
/// a class with no request in the interval has a null latency.
enum StatsSample {
    static func line(nodes: [(name: String, driver: String, stats: NodeStatsSnapshot)], previous: [String: NodeStatsSnapshot],
                     intervalNs: UInt64, wallNs: UInt64) -> String {
        var entries: [OrderedJSON] = []
        for node in nodes {
            let earlier = previous[node.name]
            var fields: [(String, OrderedJSON)] = [("node-name", .string(node.name)), ("driver", .string(node.driver))]
            var deltas: [AccountedOperation: OperationCounters] = [:]
            for operation in AccountedOperation.allCases {
                let now = node.stats[operation]
                deltas[operation] = earlier.map { now.subtracting($0[operation]) } ?? now
            }
            for operation in AccountedOperation.allCases {
                fields.append(("\(operation.fieldPrefix)_operations", .uint(deltas[operation]!.operations)))
            }
            for operation in [AccountedOperation.read, .write, .unmap] {
                fields.append(("\(operation.fieldPrefix)_bytes", .uint(deltas[operation]!.bytes)))
            }
            fields.append(("failed_operations", .uint(deltas.values.reduce(0) { $0 + $1.failed })))
            fields.append(("invalid_operations", .uint(deltas.values.reduce(0) { $0 + $1.invalid })))
            for operation in AccountedOperation.allCases {
                fields.append(("\(operation.fieldPrefix)_latency_ns", percentiles(deltas[operation]!)))
            }
            entries.append(.object(fields))
        }
        let line = OrderedJSON.object([
            ("timestamp", .object([("seconds", .uint(wallNs / 1_000_000_000)), ("microseconds", .uint(wallNs % 1_000_000_000 / 1000))])),
            ("interval-ms", .double((Double(intervalNs) / 1e6 * 10).rounded() / 10)),
            ("nodes", .array(entries)),
        ])
        return line.compactText() + "\n"
    }

    static func percentiles(_ counters: OperationCounters) -> OrderedJSON {
        guard counters.completed > 0 else { return .null }
        return .object([("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)].map { name, quantile in
            (name, counters.percentileNs(quantile).map { .uint($0) } ?? .null)
        })
    }
}
