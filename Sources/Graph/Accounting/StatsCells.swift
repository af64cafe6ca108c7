import Glibc
import StrataRuntime
import Synchronization

/// The memory of one `NodeQueueStats`, addressed by cell. A bare pointer, so a route trail holds
/// it without reference counting and reaches a cell in one load; the owning `NodeQueueStats`
/// keeps the memory alive for as long as any instance can write it. `@unchecked Sendable`: the
/// cells are only touched as atomics, written by the owning queue alone (`NodeReference.statsCells`
/// and `NodeQueueStats.recordCompletion` assert it).
public struct StatsCells: @unchecked Sendable {
    /// Per operation class: requests started (successes once done) and their bytes, failed,
    /// invalid, total time, requests suspended and their bytes, requests merged into others, then
    /// the latency buckets (the first, for latency 0, is derived: see `start`).
    @inlinable public static var operationsCell: Int { 0 }
    @inlinable public static var bytesCell: Int { 1 }
    @inlinable public static var failedCell: Int { 2 }
    @inlinable public static var invalidCell: Int { 3 }
    @inlinable public static var totalTimeCell: Int { 4 }
    @inlinable public static var suspendedCell: Int { 5 }
    @inlinable public static var suspendedBytesCell: Int { 6 }
    @inlinable public static var mergedCell: Int { 7 }
    @inlinable public static var bucketsCell: Int { 8 }
    @inlinable public static var classStride: Int { bucketsCell + LatencyBuckets.count }
    @inlinable public static var highestWriteCell: Int { classStride * 4 }
    @inlinable public static var lastCompletionCell: Int { highestWriteCell + 1 }
    /// Per histogram class: the boundary count (0: no custom histogram), the boundaries, the bins.
    @inlinable public static var maximumBoundaries: Int { 64 }
    @inlinable public static var customBase: Int { lastCompletionCell + 1 }
    @inlinable public static var customStride: Int { 1 + maximumBoundaries + maximumBoundaries + 1 }
    public static var cellCount: Int { customBase + customStride * 3 }

    @usableFromInline let base: UnsafeMutablePointer<Atomic<UInt64>>

    @usableFromInline init(base: UnsafeMutablePointer<Atomic<UInt64>>) { self.base = base }

    @inlinable @inline(__always) func bump(_ cell: Int, by amount: UInt64 = 1) {
        let value = base[cell].load(ordering: .relaxed)
        base[cell].store(value &+ amount, ordering: .relaxed)
    }

    @inlinable @inline(__always) func load(_ cell: Int) -> UInt64 { base[cell].load(ordering: .relaxed) }

    /// A request reaches the node. It is counted as a success that took no time, which is what
    /// most requests on a fast path turn out to be, so that they cost nothing when they complete;
    /// `suspend` and `finish` correct the count for the others. `nowNs` stamps the node's last
    /// activity (the queue's turn time on the fast path).
    @inlinable @inline(__always)
    public func start(_ operation: BlockOperation, offsetBytes: UInt64, lengthBytes: Int, nowNs: UInt64) {
        let accounted = AccountedOperation(operation)
        let classBase = accounted.rawValue &* Self.classStride
        bump(classBase &+ Self.operationsCell)
        bump(classBase &+ Self.bytesCell, by: UInt64(truncatingIfNeeded: lengthBytes))
        if accounted == .write {
            let end = offsetBytes &+ UInt64(truncatingIfNeeded: lengthBytes)
            if end > load(Self.highestWriteCell) { base[Self.highestWriteCell].store(end, ordering: .relaxed) }
        }
        base[Self.lastCompletionCell].store(nowNs, ordering: .relaxed)
        if accounted != .unmap { bumpCustomBin(Self.customHistogram(accounted), latencyNs: 0, by: 1) }
    }

    /// `count` requests were merged into the one about to reach the node (QEMU's `rd_merged`).
    @inlinable
    public func merged(_ operation: BlockOperation, count: Int) {
        bump(AccountedOperation(operation).rawValue &* Self.classStride &+ Self.mergedCell, by: UInt64(count))
    }

    /// The request waits (I/O, a throttle): until `finish` it is in flight, not done. Called in
    /// the same synchronous pass as `start`, so a custom histogram cannot change in between.
    @inlinable
    public func suspend(_ operation: BlockOperation, lengthBytes: Int) {
        let accounted = AccountedOperation(operation)
        let classBase = accounted.rawValue &* Self.classStride
        bump(classBase &+ Self.suspendedCell)
        bump(classBase &+ Self.suspendedBytesCell, by: UInt64(truncatingIfNeeded: lengthBytes))
        if accounted != .unmap { bumpCustomBin(Self.customHistogram(accounted), latencyNs: 0, by: UInt64.max) }
    }

    /// The request is done: `latencyNs` since it reached the node when it had suspended, 0 when
    /// it completed in the pass that started it. As QEMU with `account-invalid` and
    /// `account-failed` on: EINVAL counts as invalid (no time), another error as failed (its time
    /// counted), and only successes as operations and bytes.
    @inlinable
    public func finish(_ operation: BlockOperation, lengthBytes: Int, status: IOStatus, suspended: Bool,
                       latencyNs: UInt64, completedNs: UInt64) {
        let accounted = AccountedOperation(operation)
        let classBase = accounted.rawValue &* Self.classStride
        let bytes = UInt64(truncatingIfNeeded: lengthBytes)
        let histogram = accounted == .unmap ? nil : Self.customHistogram(accounted)
        if suspended {
            bump(classBase &+ Self.suspendedCell, by: UInt64.max)
            bump(classBase &+ Self.suspendedBytesCell, by: 0 &- bytes)
        }
        if !status.isOK {
            bump(classBase &+ Self.operationsCell, by: UInt64.max)
            bump(classBase &+ Self.bytesCell, by: 0 &- bytes)
            // EINVAL is a refused request; ENOTSUP to a splice read asks the caller to read
            // instead, which it then does: neither is a completion.
            let declinedSplice = operation == .spliceRead && status.errno == ENOTSUP
            if status.errno == EINVAL || declinedSplice {
                if !declinedSplice { bump(classBase &+ Self.invalidCell) }
                // Not a completion: out of the custom bins (and so of the derived first bucket).
                if let histogram, !suspended { bumpCustomBin(histogram, latencyNs: 0, by: UInt64.max) }
                base[Self.lastCompletionCell].store(completedNs, ordering: .relaxed)
                return
            }
            bump(classBase &+ Self.failedCell)
        }
        if suspended {
            if latencyNs != 0 {
                bump(classBase &+ Self.totalTimeCell, by: latencyNs)
                bump(classBase &+ Self.bucketsCell &+ LatencyBuckets.index(ofNs: latencyNs))
            }
            if let histogram { bumpCustomBin(histogram, latencyNs: latencyNs, by: 1) }
        }
        base[Self.lastCompletionCell].store(completedNs, ordering: .relaxed)
    }

    @inlinable static func customHistogram(_ operation: AccountedOperation) -> Int {
        customBase &+ operation.rawValue &* customStride
    }

    /// QEMU's bins: bin i counts latencies in [boundary[i-1], boundary[i]), the first from 0, the
    /// last up from the last boundary. `by` wraps: UInt64.max takes one away.
    @inlinable @inline(__always) func bumpCustomBin(_ histogram: Int, latencyNs: UInt64, by amount: UInt64) {
        let boundaryCount = Int(base[histogram].load(ordering: .acquiring))
        guard boundaryCount > 0 else { return }
        var low = 0
        var high = boundaryCount
        while low < high {
            let middle = (low &+ high) >> 1
            if latencyNs >= load(histogram &+ 1 &+ middle) { low = middle &+ 1 } else { high = middle }
        }
        bump(histogram &+ 1 &+ Self.maximumBoundaries &+ low, by: amount)
    }
}
