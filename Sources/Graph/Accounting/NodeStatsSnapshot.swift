/// One operation class's counters, summed over queues.
public struct OperationCounters: Sendable, Equatable {
    public var operations: UInt64 = 0
    public var bytes: UInt64 = 0
    public var failed: UInt64 = 0
    public var invalid: UInt64 = 0
    public var totalTimeNs: UInt64 = 0
    /// Requests a device merged into the one before them before they reached the node.
    public var merged: UInt64 = 0
    public var latencyBuckets = [UInt64](repeating: 0, count: LatencyBuckets.count)

    public init() {}

    init(operations: UInt64, bytes: UInt64, failed: UInt64, invalid: UInt64, totalTimeNs: UInt64, merged: UInt64, latencyBuckets: [UInt64]) {
        self.operations = operations
        self.bytes = bytes
        self.failed = failed
        self.invalid = invalid
        self.totalTimeNs = totalTimeNs
        self.merged = merged
        self.latencyBuckets = latencyBuckets
    }

    /// Every request of the class that completed (successes and failures; invalid ones are refused).
    public var completed: UInt64 { operations + failed }

    public func percentileNs(_ quantile: Double) -> UInt64? { LatencyBuckets.percentileNs(quantile, counts: latencyBuckets) }

    /// The counts since `earlier`.
    public func subtracting(_ earlier: OperationCounters) -> OperationCounters {
        OperationCounters(operations: operations &- earlier.operations, bytes: bytes &- earlier.bytes,
                          failed: failed &- earlier.failed, invalid: invalid &- earlier.invalid,
                          totalTimeNs: totalTimeNs &- earlier.totalTimeNs, merged: merged &- earlier.merged,
                          latencyBuckets: zip(latencyBuckets, earlier.latencyBuckets).map { $0 &- $1 })
    }
}

/// QEMU's BlockLatencyHistogramInfo: bin i counts latencies in [boundaries[i-1], boundaries[i]).
public struct CustomLatencyHistogram: Sendable, Equatable {
    public let boundaries: [UInt64]
    public let bins: [UInt64]

    public init(boundaries: [UInt64], bins: [UInt64]) {
        precondition(bins.count == boundaries.count + 1, "one bin more than boundaries")
        self.boundaries = boundaries
        self.bins = bins
    }
}

/// A node's statistics over every queue at one moment.
public struct NodeStatsSnapshot: Sendable, Equatable {
    public var classes = [OperationCounters](repeating: OperationCounters(), count: AccountedOperation.allCases.count)
    public var highestWriteOffset: UInt64 = 0
    /// Cycle-clock time of the last completion, nil before the first.
    public var lastCompletionNs: UInt64?
    public var customHistograms: [AccountedOperation: CustomLatencyHistogram] = [:]

    public init() {}

    public subscript(operation: AccountedOperation) -> OperationCounters { classes[operation.rawValue] }
}
