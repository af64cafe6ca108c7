import StrataGraph
import StrataRuntime

/// A raw node on one queue: checks the window, shifts the offset and awaits the child's instance
/// on the same executor, so forwarding never changes thread and allocates nothing.
actor RawNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let state: RawNodeState
    private let file: any BlockNode
    private let fileState: any NodeState
    private let offsetBytes: UInt64
    private let readOnly: Bool

    init(state: RawNodeState, file: any BlockNode, fileState: any NodeState, queue: QueueContext) {
        self.fileState = fileState
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.state = state
        self.file = file
        self.offsetBytes = state.configuration.offsetBytes
        self.readOnly = state.configuration.readOnly
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if request.operation == .flush { return await file.submit(request) }
        if readOnly && request.operation.isWrite { return .readOnly }
        guard let end = request.validatedEnd else { return .invalid }
        // QEMU's raw_adjust_offset: nothing may leak out of the window; a write that does not fit
        // is ENOSPC, any other request EINVAL.
        guard end <= state.windowSize(childSizeBytes: fileState.sizeBytes) else { return request.operation.isWrite ? .noSpace : .invalid }
        var shifted = request
        let (offset, overflow) = request.offsetBytes.addingReportingOverflow(offsetBytes)
        guard !overflow else { return .invalid }
        shifted.offsetBytes = offset
        return await file.submit(shifted)
    }
}
