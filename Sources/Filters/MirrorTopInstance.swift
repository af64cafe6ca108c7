import StrataGraph
import StrataRuntime

/// A mirror_top node on one queue: reads and flushes forward while routing; a write waits for
/// the source, marks its range dirty (the job copies it again), and in write-blocking mode also
/// writes the target before it completes.
actor MirrorTopInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let child: NodeHandle
    private nonisolated let state: MirrorTopNodeState
    private nonisolated let queueIndex: Int

    init(queue: QueueContext, child: NodeHandle, state: MirrorTopNodeState) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.state = state
        queueIndex = queue.index
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        request.operation.isWrite ? .suspend : .forward(to: NodeReference(child))
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        guard request.operation.isWrite else { return await child.submit(request) }
        await state.enter()
        defer { state.leave() }
        if state.isDetached { return await child.submit(request) }
        let status = await child.submit(request)
        guard status.isOK else { return status }
        if state.isWriteBlocking, let target = state.target(forQueue: queueIndex) {
            let mirrored = await target.submit(request)
            if !mirrored.isOK { return mirrored }
        }
        // After the target write: a copy racing this write is redone, never left stale.
        state.dirtyMap.mark(offsetBytes: request.offsetBytes, lengthBytes: UInt64(max(0, request.lengthBytes)))
        return .ok
    }
}
