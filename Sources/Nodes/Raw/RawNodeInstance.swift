import StrataGraph
import StrataRuntime

/// A raw node on one queue: checks the window, shifts the offset and awaits the child's instance
/// on the same executor, so forwarding never changes thread and allocates nothing.
actor RawNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let state: RawNodeState
    private let file: NodeHandle
    private let fileState: any NodeState
    private let offsetBytes: UInt64
    private let readOnly: Bool
    private let dropsDiscards: Bool

    init(state: RawNodeState, file: NodeHandle, fileState: any NodeState, queue: QueueContext) {
        self.fileState = fileState
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.state = state
        self.file = file
        self.offsetBytes = state.configuration.offsetBytes
        self.readOnly = state.configuration.readOnly
        self.dropsDiscards = state.configuration.dropsDiscards
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        await submitByRouting(request)
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        if request.operation == .flush { return .forward(to: NodeReference(file)) }
        if readOnly && request.operation.isWrite { return .complete(.readOnly) }
        if dropsDiscards && request.operation == .discard { return .complete(.ok) }
        guard let end = request.validatedEnd else { return .complete(.invalid) }
        // QEMU's raw_adjust_offset: nothing may leak out of the window; a write that does not fit
        // is ENOSPC, any other request EINVAL.
        guard end <= state.windowSize(childSizeBytes: fileState.sizeBytes) else {
            return .complete(request.operation.isWrite ? .noSpace : .invalid)
        }
        let (offset, overflow) = request.offsetBytes.addingReportingOverflow(offsetBytes)
        guard !overflow else { return .complete(.invalid) }
        request.offsetBytes = offset
        return .forward(to: NodeReference(file))
    }
}
