import Histogram

/// Latency percentiles in nanoseconds.
public struct LatencySummary: Codable, Sendable {
    public var p50: UInt64
    public var p99: UInt64
    public var p999: UInt64
    public var max: UInt64
    public var mean: Double

    public init(_ histogram: Histogram<UInt64>) {
        p50 = histogram.valueAtPercentile(50)
        p99 = histogram.valueAtPercentile(99)
        p999 = histogram.valueAtPercentile(99.9)
        max = histogram.totalCount == 0 ? 0 : histogram.max
        mean = histogram.totalCount == 0 ? 0 : histogram.mean
    }

    enum CodingKeys: String, CodingKey { case p50, p99, p999, max, mean }
}

/// One queue's figures.
public struct QueueReport: Codable, Sendable {
    public var queue: Int
    public var ops: Int
    public var reads: Int
    public var writes: Int
    public var failed: Int
    /// Requests published and never completed (a lost request): must be 0.
    public var lost: Int
    public var verifyFailures: Int
    public var bytes: UInt64
    public var iops: Double
    public var latencyNs: LatencySummary
    /// Cross-thread job hand-offs on this queue's executor during the run (0 in steady state).
    public var crossThreadEnqueues: Int

    enum CodingKeys: String, CodingKey {
        case queue, ops, reads, writes, failed, lost, bytes, iops
        case verifyFailures = "verify_failures"
        case latencyNs = "latency_ns"
        case crossThreadEnqueues = "cross_thread_enqueues"
    }
}

/// One graph edit applied during the run.
public struct EditReport: Codable, Sendable {
    public var atSeconds: Double
    public var transaction: String
    public var version: UInt64
    /// From the start of the transaction until every queue had switched.
    public var applyNs: UInt64
    /// The largest latency of a request that was in flight on some queue when that queue switched.
    public var maxInFlightLatencyNs: UInt64
    public var requestsInFlightAcross: Int
    public var error: String?

    enum CodingKeys: String, CodingKey {
        case transaction, version, error
        case atSeconds = "at_seconds"
        case applyNs = "apply_ns"
        case maxInFlightLatencyNs = "max_inflight_latency_ns"
        case requestsInFlightAcross = "requests_inflight_across"
    }
}

/// The whole run, printed as one JSON object by `strata bench --json`.
public struct LoadReport: Codable, Sendable {
    public var graph: [String]
    public var mode: String
    public var blockSizeBytes: Int
    public var queueDepth: Int
    public var queueCount: Int
    public var seed: UInt64
    public var ops: Int
    public var failed: Int
    public var lost: Int
    public var verifyFailures: Int
    public var seconds: Double
    public var iops: Double
    public var bandwidthMiBps: Double
    public var cpuNsPerOp: Double
    public var latencyNs: LatencySummary
    public var queues: [QueueReport]
    public var edits: [EditReport]

    enum CodingKeys: String, CodingKey {
        case graph, mode, seed, ops, failed, lost, seconds, iops, queues, edits
        case blockSizeBytes = "block_size"
        case queueDepth = "queue_depth"
        case queueCount = "queue_count"
        case verifyFailures = "verify_failures"
        case bandwidthMiBps = "bandwidth_mib_s"
        case cpuNsPerOp = "cpu_ns_per_op"
        case latencyNs = "latency_ns"
    }
}
