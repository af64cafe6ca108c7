import StrataRuntime

/// The nodes a request was routed through on its way to the node that completed it or suspended,
/// kept on the stack. Each node counts the request when it reaches it (`enter`) as a success that
/// took no time, so a request that completes at once costs nothing more; one that fails or
/// suspends corrects the count at every node on the trail: a forwarding node (raw, a filter with
/// nothing to do) has done its part once it forwards, but the request's outcome and latency are its.
public struct RouteTrail {
    public static let capacity = 6

    @usableFromInline var cells: InlineArray<6, StatsCells?>
    @usableFromInline var count = 0
    /// Writes reaching nodes with dirty bitmaps, marked once the write is done.
    @usableFromInline var marks: InlineArray<6, PendingMark?>
    @usableFromInline var markCount = 0
    /// Set once the request suspended: from then on it is in flight at every node on the trail.
    @usableFromInline var suspendedAtNs: UInt64 = 0

    @inlinable public init() {
        cells = .init(repeating: nil)
        marks = .init(repeating: nil)
    }

    @inlinable public var isEmpty: Bool { count == 0 }

    /// The request, as routed so far, reaches `node`, in the executor turn that began at
    /// `turnStartNs`. False when the trail is full: the caller then submits to `node` through
    /// `submitPastCapacity`, which accounts it and its subtree itself.
    @inlinable @inline(__always)
    public mutating func enter(_ node: NodeReference, _ request: BlockRequest, turnStartNs: UInt64) -> Bool {
        let stats = node.statsCells
        let dirtyMarks = request.operation.isWrite ? node.dirtyMarks : nil
        guard stats != nil || dirtyMarks != nil else { return true }
        guard count < Self.capacity, markCount < Self.capacity else { return false }
        if let dirtyMarks {
            marks[markCount] = PendingMark(marks: .passUnretained(dirtyMarks), offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes)
            markCount &+= 1
        }
        guard let stats else { return true }
        stats.start(request.operation, offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes, nowNs: turnStartNs)
        cells[count] = stats
        count &+= 1
        return true
    }

    /// The request completed in the pass that routed it: only a failure changes what `enter` counted.
    @inlinable @inline(__always)
    public func completed(_ request: BlockRequest, status: IOStatus, turnStartNs: UInt64) {
        if markCount > 0 { markDirty() }
        guard !status.isOK, count > 0 else { return }
        finish(request, status: status, suspended: false, latencyNs: 0, completedNs: turnStartNs)
    }

    /// The request waits from now on: it is in flight at every node on the trail.
    @inlinable
    public mutating func suspend(_ request: BlockRequest) {
        guard count > 0 else { return }
        suspendedAtNs = CycleClock.now()
        let cellSpan = cells.span
        for index in 0..<count {
            cellSpan[unchecked: index].unsafelyUnwrapped.suspend(request.operation, lengthBytes: request.lengthBytes)
        }
    }

    /// A suspended request is done.
    @inlinable
    public func resumed(_ request: BlockRequest, status: IOStatus) {
        if markCount > 0 { markDirty() }
        guard count > 0 else { return }
        assert(suspendedAtNs != 0, "only a suspended request resumes")
        let endNs = CycleClock.now()
        finish(request, status: status, suspended: true, latencyNs: endNs &- suspendedAtNs, completedNs: endNs)
    }

    /// Marks the bitmaps of every node on the trail that a write reached.
    @usableFromInline
    func markDirty() {
        let markSpan = marks.span
        for index in 0..<markCount {
            let mark = markSpan[unchecked: index].unsafelyUnwrapped
            mark.marks._withUnsafeGuaranteedRef { marks in
                for bitmap in marks.bitmaps { bitmap.mark(offsetBytes: mark.offsetBytes, lengthBytes: UInt64(max(0, mark.lengthBytes))) }
            }
        }
    }

    @inlinable
    func finish(_ request: BlockRequest, status: IOStatus, suspended: Bool, latencyNs: UInt64, completedNs: UInt64) {
        // Through a span: subscripting the array itself copies it on every iteration.
        let cellSpan = cells.span
        for index in 0..<count {
            cellSpan[unchecked: index].unsafelyUnwrapped.finish(
                request.operation, lengthBytes: request.lengthBytes, status: status, suspended: suspended,
                latencyNs: latencyNs, completedNs: completedNs)
        }
    }

    /// A trail at capacity (a stack of more forwarding nodes than it holds): the rest of the route
    /// runs as an accounted submit to `node`, timed for the nodes on the trail.
    public nonisolated(nonsending) func submitPastCapacity(_ request: BlockRequest, to node: NodeReference) async -> IOStatus {
        assert(count == Self.capacity || markCount == Self.capacity, "only a full trail hands the rest of the route on")
        var trail = self
        trail.suspend(request)
        let status = await node.counted.submit(request)
        trail.resumed(request, status: status)
        return status
    }
}

/// A write that reached a node with dirty bitmaps, as that node saw it. The reference is not
/// counted: the node's handle holds its marks, and the request's pinned version holds the handle.
@usableFromInline struct PendingMark {
    @usableFromInline let marks: Unmanaged<DirtyMarks>
    @usableFromInline let offsetBytes: UInt64
    @usableFromInline let lengthBytes: Int

    @usableFromInline init(marks: Unmanaged<DirtyMarks>, offsetBytes: UInt64, lengthBytes: Int) {
        self.marks = marks
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
    }
}
