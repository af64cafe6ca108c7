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
