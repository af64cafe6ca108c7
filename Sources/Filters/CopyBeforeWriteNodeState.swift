import StrataGraph
import StrataRuntime
import Synchronization

/// A copy-before-write node's shared state: which chunks still hold the snapshot's data on the
/// source (set bits: not yet copied to the target), and the range lock that orders copies before
/// the guest writes that would change them.
///
/// A chunk's bit is only taken (cleared) by a copy holding the chunk exclusively, and guest writes
/// hold theirs shared, so a chunk is copied at most once and never after the guest changed it.
public final class CopyBeforeWriteNodeState: NodeState, TransparentChainLayer {
    let configuration: CopyBeforeWriteConfiguration
    private let source: ChildStateReference
    private let targetState: ChildStateReference
    /// QEMU's block-copy cluster size: 64 KiB, or the target's cluster when larger.
    public let chunkBytes: UInt64
    /// Set: still to be copied before the source may change there. All set when the filter goes
    /// in (the whole image is the snapshot); a backup narrows it to what it copies.
    public let pending: AtomicBitmap
    /// Chunks a copy failed for under `break-snapshot`: the snapshot there is lost.
    let broken: AtomicBitmap
    let locks = RangeLock()
    /// Bytes copied to the target so far, by guest writes and by a backup job.
    private let copied = Atomic<UInt64>(0)

    public var copiedBytes: UInt64 { copied.load(ordering: .relaxed) }

    init(configuration: CopyBeforeWriteConfiguration, source: any NodeState, target: any NodeState) {
        self.configuration = configuration
        self.source = ChildStateReference(source)
        targetState = ChildStateReference(target)
        let unit = UInt64((target as? any BackingChainLayer)?.allocationUnitBytes ?? 0)
        chunkBytes = max(65536, unit.nonzeroBitCount == 1 ? unit : 0)
        pending = AtomicBitmap(sizeBytes: source.sizeBytes, granularity: chunkBytes)
        pending.markAll()
        broken = AtomicBitmap(sizeBytes: source.sizeBytes, granularity: chunkBytes)
    }

    public var sizeBytes: UInt64 { source.current.sizeBytes }

    /// Keeps only the chunks `wanted` has set still to copy (a backup that copies less than the
    /// whole image); chunks already copied stay copied.
    public func restrictPending(to wanted: AtomicBitmap) {
        precondition(wanted.granularity == chunkBytes && wanted.bitCount == pending.bitCount, "the same chunks")
        for bit in 0..<pending.bitCount where !wanted.isSet(bit) { _ = pending.take(bit) }
    }

    /// Copies every pending chunk of `chunks` with `copy` and clears it, holding the chunks
    /// exclusively meanwhile (waiting for guest writes in them to finish). Returns the bytes
    /// copied, or the first failed copy (its chunks stay pending).
    public nonisolated(nonsending) func copyPending(_ chunks: ClosedRange<Int>,
                                                   copy: (_ offset: UInt64, _ length: Int) async -> CopyOutcome) async -> (copied: UInt64, failure: CopyOutcome?) {
        let size = sizeBytes
        let start = UInt64(chunks.lowerBound) * chunkBytes
        let end = min(size, UInt64(chunks.upperBound + 1) * chunkBytes)
        guard start < end else { return (0, nil) }
        let hold = await locks.acquire(start..<end, exclusive: true)
        defer { locks.release(hold) }
        var copied: UInt64 = 0
        var bit = chunks.lowerBound
        while bit <= chunks.upperBound, let first = pending.next(from: bit), first <= chunks.upperBound {
            // A run of pending chunks, copied as one request.
            var last = first
            while last < chunks.upperBound, pending.isSet(last + 1) { last += 1 }
            let offset = UInt64(first) * chunkBytes
            let length = Int(min(size, UInt64(last + 1) * chunkBytes) - offset)
            let outcome = await copy(offset, length)
            guard outcome.status.isOK else { return (copied, outcome) }
            for done in first...last { _ = pending.take(done) }
            copied += UInt64(length)
            self.copied.add(UInt64(length), ordering: .relaxed)
            bit = last + 1
        }
        return (copied, nil)
    }

    public func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let sourceHandle = children.child(configuration.file.optionKey),
              let targetHandle = children.child(configuration.target.optionKey) else {
            preconditionFailure("copy-before-write instance built without its children")
        }
        return CopyBeforeWriteInstance(queue: queue, source: sourceHandle, target: targetHandle, state: self)
    }

    public func relink(children: [ChildLink: any NodeState]) {
        if let newSource = children.child(configuration.file.optionKey) { source.replace(with: newSource) }
        if let newTarget = children.child(configuration.target.optionKey) { targetState.replace(with: newTarget) }
    }

    public var filteredState: any NodeState { source.current }
}

/// How one copy to a copy-before-write target ended: the status, and whether a failure was the
/// read of the source (else the write of the target), for the job's error policies.
public struct CopyOutcome: Sendable {
    public let status: IOStatus
    public let failedReading: Bool

    public static let ok = CopyOutcome(status: .ok, failedReading: false)

    public init(status: IOStatus, failedReading: Bool) {
        self.status = status
        self.failedReading = failedReading
    }
}
