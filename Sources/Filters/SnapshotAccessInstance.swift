import StrataGraph
import StrataRuntime

/// Reads through the filter's snapshot view; writes are refused (the snapshot cannot change), and
/// flushes have nothing to do.
actor SnapshotAccessInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let filter: CopyBeforeWriteInstance

    init(queue: QueueContext, filter: CopyBeforeWriteInstance) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.filter = filter
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        switch request.operation {
        case .read: .suspend
        case .flush: .complete(.ok)
        case .spliceRead: .complete(.notSupported)
        case .write, .writeZeroes, .discard: .complete(.readOnly)
        }
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        switch request.operation {
        case .read: await filter.readSnapshot(request)
        case .flush: .ok
        case .spliceRead: .notSupported
        case .write, .writeZeroes, .discard: .readOnly
        }
    }
}
