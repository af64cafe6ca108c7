import StrataGraph
import StrataRuntime

/// A sim node on one queue. A request waits its drawn number of executor turns (yields, not a
/// timer: real time would make the order of completions depend on the machine), then takes
/// effect, so requests in flight together complete in a seeded order. With a service-time model
/// it waits on the queue's clock instead, until the model says the device is done with it.
actor SimNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let state: SimNodeState
    private nonisolated let executor: QueueExecutor
    private nonisolated let clock: any IOClock

    init(state: SimNodeState, executor: QueueExecutor, clock: any IOClock) {
        self.unownedExecutor = executor.asUnownedSerialExecutor()
        self.state = state
        self.executor = executor
        self.clock = clock
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if request.operation != .flush {
            guard let end = request.validatedEnd else { return .invalid }
            if request.operation.isWrite && end > UInt64(state.configuration.maxSizeBytes) { return .noSpace }
        }
        if state.configuration.readOnly && request.operation.isWrite { return .readOnly }
        if request.flags.contains(.compressed) || request.operation == .spliceRead { return .notSupported }
        guard let plan = state.begin(request, nowNs: clock.nowNs) else { return .ioError }
        if let completionNs = plan.completionNs {
            await clock.sleep(untilNs: completionNs)
        } else {
            for _ in 0..<plan.latencyTurns { await executor.yield() }
        }
        return state.finish(request, plan)
    }
}
