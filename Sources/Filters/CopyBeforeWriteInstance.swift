import StrataGraph
import StrataRuntime

/// A copy-before-write node on one queue. Reads and flushes go to the source as they are; a
/// write, write-zeroes or discard first copies the chunks it touches that still hold the
/// snapshot's data to the target (through this queue's instances of both), then goes to the
/// source. `readSnapshot` serves snapshot-access: each chunk from the target once copied there,
/// else from the source, which has not changed there.
actor CopyBeforeWriteInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let source: NodeHandle
    private nonisolated let target: NodeHandle
    private nonisolated let state: CopyBeforeWriteNodeState

    init(queue: QueueContext, source: NodeHandle, target: NodeHandle, state: CopyBeforeWriteNodeState) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.source = source
        self.target = target
        self.state = state
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        request.operation.isWrite ? .suspend : .forward(to: NodeReference(source))
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        guard request.operation.isWrite, request.lengthBytes > 0, let end = request.endBytes else { return await source.submit(request) }
        guard let chunks = state.pending.bits(offsetBytes: request.offsetBytes, lengthBytes: UInt64(request.lengthBytes)) else {
            return await source.submit(request)
        }
        var hold = await state.locks.acquire(request.offsetBytes..<end, exclusive: false)
        if state.pending.anySet(chunks) {
            state.locks.release(hold)
            let (_, failure) = await state.copyPending(chunks) { offset, length in await self.copy(offset: offset, length: length) }
            if let failure {
                switch state.configuration.onCopyError {
                case .breakGuestWrite:
                    return failure.status
                case .breakSnapshot:
                    state.broken.setBits(chunks)
                    for bit in chunks { _ = state.pending.take(bit) }
                }
            }
            hold = await state.locks.acquire(request.offsetBytes..<end, exclusive: false)
        }
        let status = await source.submit(request)
        state.locks.release(hold)
        return status
    }

    /// Copies `[offset, offset + length)` from the source to the target.
    private nonisolated(nonsending) func copy(offset: UInt64, length: Int) async -> CopyOutcome {
        let buffer = AlignedBuffer(count: length)
        let read = await source.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length, buffer: buffer.slice(from: 0, count: length)))
        guard read.isOK else { return CopyOutcome(status: read, failedReading: true) }
        let written = await target.submit(BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: length, buffer: buffer.slice(from: 0, count: length)))
        return CopyOutcome(status: written, failedReading: false)
    }

    /// Reads the image as it was when the filter went in (snapshot-access).
    nonisolated(nonsending) func readSnapshot(_ request: BlockRequest) async -> IOStatus {
        guard request.operation == .read, request.lengthBytes > 0, let end = request.endBytes else { return .ok }
        guard let base = request.buffer.base, let chunks = state.pending.bits(offsetBytes: request.offsetBytes, lengthBytes: UInt64(request.lengthBytes)) else {
            return .invalid
        }
        if state.broken.anySet(chunks) { return .ioError }
        let hold = await state.locks.acquire(request.offsetBytes..<end, exclusive: false)
        defer { state.locks.release(hold) }
        // Runs of chunks on the same side, each one request.
        var offset = request.offsetBytes
        var bit = chunks.lowerBound
        while bit <= chunks.upperBound {
            let onSource = state.pending.isSet(bit)
            var last = bit
            while last < chunks.upperBound, state.pending.isSet(last + 1) == onSource { last += 1 }
            let runEnd = min(end, UInt64(last + 1) * state.chunkBytes)
            let length = Int(runEnd - offset)
            let piece = BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                     buffer: IOBuffer(base: base + Int(offset - request.offsetBytes), count: length))
            let status = await (onSource ? source : target).submit(piece)
            guard status.isOK else { return status }
            offset = runEnd
            bit = last + 1
        }
        return .ok
    }
}
