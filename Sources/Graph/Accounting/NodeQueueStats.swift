import StrataRuntime
import Synchronization

/// One node's accounting on one queue: QEMU's BlockAcctStats counters, a latency histogram per
/// operation class and the custom histograms `block-latency-histogram-set` asks for.
///
/// Only the queue that owns it writes (from its executor thread); the control plane reads. Every
/// cell is an `Atomic` updated by a relaxed load and store, which is a plain move on x86 and ARM:
/// no read-modify-write, no lock and no shared cache line on the request path, since each queue
/// has its own object. `@unchecked Sendable` because the cells live in memory this object
/// allocates (a pointer is not Sendable); they are only ever touched as atomics, and
/// `recordCompletion` asserts that it runs on the owning queue.
public final class NodeQueueStats: @unchecked Sendable {
    @usableFromInline let cells: StatsCells
    public let queueIndex: Int
    /// The executor that owns the object, for the assertion that only it writes.
    @usableFromInline let owner: QueueExecutor?

    public init(queueIndex: Int, owner: QueueExecutor?) {
        precondition(AccountedOperation.allCases.count == 4 && AccountedOperation.histogramClasses.count == 3,
                     "the cell layout has room for 4 operation classes and 3 custom histograms")
        self.queueIndex = queueIndex
        self.owner = owner
        cells = StatsCells(base: .allocate(capacity: StatsCells.cellCount))
        for index in 0..<StatsCells.cellCount { (cells.base + index).initialize(to: Atomic(0)) }
    }

    deinit {
        cells.base.deinitialize(count: StatsCells.cellCount)
        cells.base.deallocate()
    }

    /// Accounts a request served through a handle (a parent's I/O to its child): it counts as
    /// suspended from the start, since the handle awaits it.
    @inlinable
    func start(_ request: BlockRequest, nowNs: UInt64) {
        assert(owner?.isCurrent ?? true, "node statistics of queue \(queueIndex) written from another thread")
        cells.start(request.operation, offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes, nowNs: nowNs)
        cells.suspend(request.operation, lengthBytes: request.lengthBytes)
    }

    @inlinable
    func finish(_ request: BlockRequest, status: IOStatus, latencyNs: UInt64, completedNs: UInt64) {
        assert(owner?.isCurrent ?? true, "node statistics of queue \(queueIndex) written from another thread")
        cells.finish(request.operation, lengthBytes: request.lengthBytes, status: status, suspended: true,
                     latencyNs: latencyNs, completedNs: completedNs)
    }

    @inline(__always) func load(_ cell: Int) -> UInt64 { cells.load(cell) }
    /// Installs (or with no boundaries removes) the custom histogram of one class and zeroes its
    /// bins, as `block-latency-histogram-set` does. Runs on the owning queue, like every write; a
    /// reader sees the old histogram, none, or the new one (the count is published last).
    func setCustomHistogram(_ operation: AccountedOperation, boundaries: [UInt64]) {
        assert(owner?.isCurrent ?? true, "node statistics of queue \(queueIndex) written from another thread")
        precondition(operation != .unmap, "QEMU keeps no unmap latency histogram")
        precondition(boundaries.count <= StatsCells.maximumBoundaries, "at most \(StatsCells.maximumBoundaries) boundaries")
        precondition(zip(boundaries, boundaries.dropFirst()).allSatisfy { $0 < $1 }, "boundaries increase strictly")
        let base = StatsCells.customBase + operation.rawValue * StatsCells.customStride
        cells.base[base].store(0, ordering: .releasing)
        for (index, boundary) in boundaries.enumerated() { cells.base[base + 1 + index].store(boundary, ordering: .relaxed) }
        for bin in 0...StatsCells.maximumBoundaries { cells.base[base + 1 + StatsCells.maximumBoundaries + bin].store(0, ordering: .relaxed) }
        cells.base[base].store(UInt64(boundaries.count), ordering: .releasing)
    }

    /// Adds this queue's counters into `sum`.
    func add(into sum: inout NodeStatsSnapshot) {
        for operation in AccountedOperation.allCases {
            let base = operation.rawValue * StatsCells.classStride
            var counters = sum.classes[operation.rawValue]
            // The queue keeps writing while this reads: differences never go below zero.
            let suspended = load(base + StatsCells.suspendedCell)
            let operations = load(base + StatsCells.operationsCell).subtractingClamped(suspended)
            let failed = load(base + StatsCells.failedCell)
            counters.operations += operations
            counters.bytes += load(base + StatsCells.bytesCell).subtractingClamped(load(base + StatsCells.suspendedBytesCell))
            counters.failed += failed
            counters.invalid += load(base + StatsCells.invalidCell)
            counters.totalTimeNs += load(base + StatsCells.totalTimeCell)
            counters.merged += load(base + StatsCells.mergedCell)
            var timed: UInt64 = 0
            for bucket in 1..<LatencyBuckets.count {
                let count = load(base + StatsCells.bucketsCell + bucket)
                counters.latencyBuckets[bucket] += count
                timed += count
            }
            // Requests done in the pass that started them are not counted by bucket but derived.
            counters.latencyBuckets[0] += (operations + failed).subtractingClamped(timed)
            sum.classes[operation.rawValue] = counters
        }
        sum.highestWriteOffset = max(sum.highestWriteOffset, load(StatsCells.highestWriteCell))
        let lastCompletion = load(StatsCells.lastCompletionCell)
        if lastCompletion > 0 { sum.lastCompletionNs = max(sum.lastCompletionNs ?? 0, lastCompletion) }
        for operation in AccountedOperation.histogramClasses {
            let base = StatsCells.customBase + operation.rawValue * StatsCells.customStride
            let boundaryCount = Int(cells.base[base].load(ordering: .acquiring))
            guard boundaryCount > 0 else { continue }
            let boundaries = (0..<boundaryCount).map { load(base + 1 + $0) }
            let bins = (0...boundaryCount).map { load(base + 1 + StatsCells.maximumBoundaries + $0) }
            if let existing = sum.customHistograms[operation], existing.boundaries == boundaries {
                sum.customHistograms[operation] = CustomLatencyHistogram(boundaries: boundaries, bins: zip(existing.bins, bins).map(+))
            } else {
                sum.customHistograms[operation] = CustomLatencyHistogram(boundaries: boundaries, bins: bins)
            }
        }
    }
}

extension UInt64 {
    /// `self - other`, or 0 when `other` is larger (counters read while a queue updates them).
    func subtractingClamped(_ other: UInt64) -> UInt64 { self > other ? self - other : 0 }
}
