import StrataGraph
import StrataRuntime

/// A sim node on one queue. A request waits its drawn number of executor turns (yields, not a
/// timer: real time would make the order of completions depend on the machine), then takes
/// effect, so requests in flight together complete in a seeded order.
actor SimNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let state: SimNodeState
    private nonisolated let executor: QueueExecutor

    init(state: SimNodeState, executor: QueueExecutor) {
        self.unownedExecutor = executor.asUnownedSerialExecutor()
        self.state = state
        self.executor = executor
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if request.operation != .flush {
            guard let end = request.validatedEnd else { return .invalid }
            if request.operation.isWrite && end > UInt64(state.configuration.maxSizeBytes) { return .noSpace }
        }
        if state.configuration.readOnly && request.operation.isWrite { return .readOnly }
        if request.flags.contains(.compressed) || request.operation == .spliceRead { return .notSupported }
        guard let plan = state.begin(request) else { return .ioError }
        for _ in 0..<plan.latencyTurns { await executor.yield() }
        return state.finish(request, plan)
    }
}
