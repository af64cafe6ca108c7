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
    /// Set once the request suspended: from then on it is in flight at every node on the trail.
    @usableFromInline var suspendedAtNs: UInt64 = 0

    @inlinable public init() { cells = .init(repeating: nil) }

    @inlinable public var isEmpty: Bool { count == 0 }

    /// The request, as routed so far, reaches `node`, in the executor turn that began at
    /// `turnStartNs`. False when the trail is full: the caller then submits to `node` through
    /// `submitPastCapacity`, which accounts it and its subtree itself.
    @inlinable @inline(__always)
    public mutating func enter(_ node: NodeReference, _ request: BlockRequest, turnStartNs: UInt64) -> Bool {
        guard let stats = node.statsCells else { return true }
        guard count < Self.capacity else { return false }
        stats.start(request.operation, offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes, nowNs: turnStartNs)
        cells[count] = stats
        count &+= 1
        return true
    }

    /// The request completed in the pass that routed it: only a failure changes what `enter` counted.
    @inlinable @inline(__always)
    public func completed(_ request: BlockRequest, status: IOStatus, turnStartNs: UInt64) {
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
        guard count > 0 else { return }
        assert(suspendedAtNs != 0, "only a suspended request resumes")
        let endNs = CycleClock.now()
        finish(request, status: status, suspended: true, latencyNs: endNs &- suspendedAtNs, completedNs: endNs)
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
        assert(count == Self.capacity, "only a full trail hands the rest of the route on")
        var trail = self
        trail.suspend(request)
        let status = await node.counted.submit(request)
        trail.resumed(request, status: status)
        return status
    }
}
