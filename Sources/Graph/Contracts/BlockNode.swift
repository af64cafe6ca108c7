import StrataRuntime

/// A per-queue instance of a graph node: an actor bound to its queue's executor.
///
/// Every node in the graph has one instance per queue; a request walks device -> filters ->
/// format -> protocol as awaits between instances on one executor, so no hop changes thread.
/// Instances hold no state worth keeping across graph versions: what must survive an edit lives
/// in the node's shared `NodeState`.
///
/// `submit` is `nonisolated(nonsending)`: it runs on the caller's executor, which for a request is
/// the instance's own queue executor, so entering a node costs a call, not an executor switch (in
/// Swift 6.3 every switch, even to the same executor, does a 16-byte atomic on the task status).
/// A node whose per-queue state is mutable awaits one of its isolated methods from there.
public protocol BlockNode: Actor {
    /// Serves one request. Read/write buffers belong to the caller until this returns.
    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus

    /// The synchronous part of serving `request`: a node that only checks and rewrites a request
    /// (raw's window, an unlimited throttle) forwards it to a child; one that can answer at once
    /// (null-co) completes it; one that must wait (I/O, a throttle's budget, latency) says
    /// `.suspend`, and the caller then awaits `submit` with the request as routed so far.
    /// Must agree with `submit`: routing then submitting is the same as submitting.
    nonisolated func route(_ request: inout BlockRequest) -> Routing
}

/// What `route` decided.
public enum Routing {
    case forward(to: NodeReference)
    case complete(IOStatus)
    case suspend
}

/// One node instance on one queue as the graph built it: the instance and that node's statistics
/// on that queue (nil when accounting is off, or for instances the control path makes for itself).
/// Parents hold their children's handles; the request path reaches a node through an uncounted
/// reference to its handle: a call through a `let` of a guaranteed object needs no retain, one
/// through an `unowned(unsafe)` existential does.
public final class NodeHandle: Sendable {
    public let node: any BlockNode
    public let stats: NodeQueueStats?
    /// `stats`'s memory, for route trails (this handle keeps it alive).
    @usableFromInline let statsCells: StatsCells?
    /// The dirty bitmaps this node's writes mark on this version; nil when none.
    @usableFromInline let dirtyMarks: DirtyMarks?

    public init(_ node: any BlockNode, stats: NodeQueueStats? = nil, dirtyMarks: DirtyMarks? = nil) {
        self.node = node
        self.stats = stats
        self.statsCells = stats?.cells
        self.dirtyMarks = dirtyMarks
    }

    /// Serves a request and accounts it to this node: what a parent calls for I/O to a child.
    public nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if let dirtyMarks {
            let status = await accountedSubmit(request)
            dirtyMarks.record(request)
            return status
        }
        return await accountedSubmit(request)
    }

    private nonisolated(nonsending) func accountedSubmit(_ request: BlockRequest) async -> IOStatus {
        guard let stats else { return await node.submit(request) }
        let startNs = CycleClock.now()
        stats.start(request, nowNs: startNs)
        let status = await node.submit(request)
        let endNs = CycleClock.now()
        stats.finish(request, status: status, latencyNs: endNs &- startNs, completedNs: endNs)
        return status
    }
}

/// An uncounted reference to a node instance, so routing a request costs no atomic reference-count
/// operation (each costs ~15-20 ns here, as much as the rest of a hop). Safe while the request is in
/// flight: its graph version is pinned (`VersionedRoot.begin`), the version holds its root's handle,
/// and every instance holds its children's handles.
public struct NodeReference {
    @usableFromInline let handle: Unmanaged<NodeHandle>

    @inlinable public init(_ handle: NodeHandle) { self.handle = .passUnretained(handle) }

    /// The node, counted: for the suspending path, which holds it across awaits.
    @inlinable public var node: any BlockNode { handle.takeUnretainedValue().node }

    /// The handle, counted: for an accounted submit on the suspending path.
    @inlinable public var counted: NodeHandle { handle.takeUnretainedValue() }

    @inlinable @inline(__always)
    public func route(_ request: inout BlockRequest) -> Routing {
        handle._withUnsafeGuaranteedRef { $0.node.route(&request) }
    }

    @inlinable @inline(__always) var statsCells: StatsCells? {
        handle._withUnsafeGuaranteedRef {
            assert($0.stats?.owner?.isCurrent ?? true, "a request is routed on the queue whose statistics it writes")
            return $0.statsCells
        }
    }

    /// A device merged `count` requests into the one it is about to route to this node.
    @inlinable public func countMerged(_ operation: BlockOperation, count: Int) {
        statsCells?.merged(operation, count: count)
    }

    @inlinable @inline(__always) var dirtyMarks: DirtyMarks? { handle._withUnsafeGuaranteedRef { $0.dirtyMarks } }
}

extension BlockNode {
    public nonisolated func route(_ request: inout BlockRequest) -> Routing { .suspend }

    /// `submit` for nodes whose `route` never suspends on the node itself: follows routes
    /// synchronously and awaits only the first node that has to wait. Requests that complete by
    /// routing alone never suspend, allocate an async frame or touch the executor.
    /// Every node routed to is accounted (this one is, by the handle its caller submitted through).
    public nonisolated(nonsending) func submitByRouting(_ request: BlockRequest) async -> IOStatus {
        var request = request
        var target: any BlockNode = self
        var trail = RouteTrail()
        var turnStartNs: UInt64 = 0
        while true {
            switch target.route(&request) {
            case .forward(let next):
                if turnStartNs == 0 { turnStartNs = QueueExecutor.current?.turnStartNs ?? CycleClock.now() }
                guard trail.enter(next, request, turnStartNs: turnStartNs) else {
                    return await trail.submitPastCapacity(request, to: next)
                }
                target = next.node
            case .complete(let status):
                trail.completed(request, status: status, turnStartNs: turnStartNs)
                return status
            case .suspend:
                trail.suspend(request)
                let status = await target.submit(request)
                trail.resumed(request, status: status)
                return status
            }
        }
    }
}

/// Where a per-queue instance lives: the queue's index, its executor, and its clock.
public struct QueueContext: Sendable {
    public let index: Int
    public let executor: QueueExecutor
    public let clock: any IOClock

    public init(index: Int, executor: QueueExecutor, clock: any IOClock) {
        self.index = index
        self.executor = executor
        self.clock = clock
    }
}
