import StrataGraph
import StrataRuntime

/// A blkdebug node on one queue: a request a rule matches completes at once with the rule's
/// error; the rest are forwarded while routing.
actor BlkdebugInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let child: NodeHandle
    private nonisolated let rules: [BlkdebugRule]

    init(queue: QueueContext, child: NodeHandle, rules: [BlkdebugRule]) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.rules = rules
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        for rule in rules {
            if let status = rule.verdict(for: request) { return .complete(status) }
        }
        return .forward(to: NodeReference(child))
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus { await submitByRouting(request) }
}
