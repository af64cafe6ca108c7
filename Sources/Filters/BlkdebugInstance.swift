import StrataGraph
import StrataRuntime

/// A blkdebug node on one queue: a request a rule matches completes at once with the rule's
/// error; the rest are forwarded while routing. Rules match the event a request fires: its
/// `debugEvent` (set by the format node above) or, for guest data, its operation.
actor BlkdebugInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    nonisolated let child: NodeHandle
    nonisolated let state: BlkdebugNodeState

    init(queue: QueueContext, child: NodeHandle, state: BlkdebugNodeState) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.state = state
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        // A breakpoint may hold the request: that takes `submit`, which can wait.
        // So may constraints: padding and cutting a request takes `submit` too.
        if state.hasBreakpoints || state.limits.isActive { return .suspend }
        if let status = state.verdict(for: request) { return .complete(status) }
        return .forward(to: NodeReference(child))
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        await state.waitAtBreakpoint(request)
        if state.limits.isActive { return await submitWithinLimits(request, state.limits) }
        if let status = state.verdict(for: request) { return status }
        return await child.submit(request)
    }
}
