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

/// Holds one node instance so that the request path can reach it through an uncounted reference:
/// a call through a `let` of a guaranteed object needs no retain, one through an `unowned(unsafe)`
/// existential does.
public final class NodeHandle: Sendable {
    public let node: any BlockNode

    public init(_ node: any BlockNode) { self.node = node }
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

    @inlinable @inline(__always)
    public func route(_ request: inout BlockRequest) -> Routing {
        handle._withUnsafeGuaranteedRef { $0.node.route(&request) }
    }
}

extension BlockNode {
    public nonisolated func route(_ request: inout BlockRequest) -> Routing { .suspend }

    /// `submit` for nodes whose `route` never suspends on the node itself: follows routes
    /// synchronously and awaits only the first node that has to wait. Requests that complete by
    /// routing alone never suspend, allocate an async frame or touch the executor.
    public nonisolated(nonsending) func submitByRouting(_ request: BlockRequest) async -> IOStatus {
        var request = request
        var target: any BlockNode = self
        while true {
            switch target.route(&request) {
            case .forward(let next): target = next.node
            case .complete(let status): return status
            case .suspend: return await target.submit(request)
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
