import StrataGraph
import StrataRuntime

/// A commit_top node on one queue: forwards every request to its child while routing.
actor CommitTopInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let child: NodeHandle

    init(queue: QueueContext, child: NodeHandle) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing { .forward(to: NodeReference(child)) }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus { await submitByRouting(request) }
}
