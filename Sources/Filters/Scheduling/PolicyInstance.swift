import StrataGraph
import StrataRuntime

/// A policy node on one queue: every request but a flush waits for the scheduler's turn, goes to
/// the child, and gives its place back when the child completes it.
actor PolicyInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let child: NodeHandle
    private nonisolated let state: PolicyNodeState
    private nonisolated let clock: any IOClock

    init(queue: QueueContext, child: NodeHandle, state: PolicyNodeState) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.state = state
        self.clock = queue.clock
    }

    /// A flush moves no data and orders nothing among tenants: it goes straight to the child.
    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        request.operation == .flush ? .forward(to: NodeReference(child)) : .suspend
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if request.operation == .flush { return await child.submit(request) }
        let scheduler = state.scheduler
        let admitted = await scheduler.admit(tenant: state.tenants.index(ofTag: request.tag), isWrite: request.operation.isWrite,
                                             bytes: request.lengthBytes, offsetBytes: request.offsetBytes, clock: clock)
        let status = await child.submit(request)
        scheduler.finished(admitted, clock: clock)
        return status
    }
}
