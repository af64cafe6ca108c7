import CStrataShim
import StrataGraph
import StrataRuntime

/// A null-co or null-aio node on one queue. Nothing is allocated per request: the checks are
/// arithmetic, the latency sleep goes through the queue's clock (an io_uring timeout on a queue
/// executor) and null-aio's completion is a NOP on the queue's ring.
actor NullNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let configuration: NullNodeConfiguration
    private let clock: any IOClock
    private let executor: QueueExecutor

    init(configuration: NullNodeConfiguration, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.configuration = configuration
        self.clock = queue.clock
        self.executor = queue.executor
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if configuration.latencyNs > 0 {
            await clock.sleep(untilNs: clock.nowNs &+ configuration.latencyNs)
        }
        if configuration.throughRing {
            let result = await executor.perform { io_uring_prep_nop($0) }
            if result < 0 { return IOStatus(errno: -result) }
        }
        return serve(request)
    }

    /// null-co without latency completes a request while routing, with no suspension at all.
    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        configuration.latencyNs > 0 || configuration.throughRing ? .suspend : .complete(serve(request))
    }

    private nonisolated func serve(_ request: BlockRequest) -> IOStatus {
        let range = request.rangeStatus(sizeBytes: configuration.sizeBytes)
        guard range.isOK else { return range }
        if configuration.readOnly && request.operation.isWrite { return .readOnly }
        if request.flags.contains(.compressed) || request.operation == .spliceRead { return .notSupported }
        if request.operation == .read && configuration.readZeroes {
            request.buffer.slice(from: 0, count: request.lengthBytes).zero()
        }
        return .ok
    }
}
