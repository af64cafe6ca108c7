import StrataRuntime

/// A per-queue instance of a graph node: an actor bound to its queue's executor.
///
/// Every node in the graph has one instance per queue; a request walks device -> filters ->
/// format -> protocol as awaits between instances on one executor, so no hop changes thread.
/// Instances hold no state worth keeping across graph versions: what must survive an edit lives
/// in the node's shared `NodeState`.
public protocol BlockNode: Actor {
    /// Serves one request. Read/write buffers belong to the caller until this returns.
    func submit(_ request: BlockRequest) async -> IOStatus
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
