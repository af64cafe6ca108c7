import StrataGraph
import StrataNBD
import StrataRuntime

/// An nbd node on one queue. It keeps no mutable state: it checks a request, splits it to the
/// server's limits and hands each piece to its connection (its own queue's, or the shared one),
/// mapping BlockRequest operations to NBD commands as QEMU's nbd driver does.
actor NBDClientNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let state: NBDClientNodeState
    private nonisolated let connection: NBDClientConnection

    init(state: NBDClientNodeState, connection: NBDClientConnection, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.state = state
        self.connection = connection
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        let flags = state.flags
        if request.operation == .flush {
            // Without SEND_FLUSH the server has no volatile cache to flush.
            guard flags.contains(.sendFlush) else { return .ok }
            return await connection.execute(.flush, offset: 0, length: 0).0
        }
        guard request.lengthBytes >= 0, let end = request.endBytes else { return .invalid }
        // QEMU's BlockBackend check: nothing past the end reaches the driver.
        guard end <= state.sizeBytes else { return .ioError }
        if request.operation == .read || request.operation == .write {
            guard request.buffer.count >= request.lengthBytes else { return .invalid }
        }
        if request.operation.isWrite && state.readOnly { return .readOnly }
        // A protocol node has no clusters to compress.
        if request.flags.contains(.compressed) { return .notSupported }
        if request.lengthBytes == 0 { return .ok }
        // QEMU aligns requests for the server by read-modify-write in its block layer; Strata has
        // no such layer, so a misaligned request is refused.
        let alignment = state.minimumBlockBytes
        if request.offsetBytes % alignment != 0 || UInt64(request.lengthBytes) % alignment != 0 { return .invalid }
        switch request.operation {
        case .read:
            return await transfer(.read, request, commandFlags: [])
        case .write:
            let fua = request.flags.contains(.fua)
            if fua && !flags.contains(.sendFUA) {
                let status = await transfer(.write, request, commandFlags: [])
                guard status.isOK, flags.contains(.sendFlush) else { return status }
                return await connection.execute(.flush, offset: 0, length: 0).0
            }
            return await transfer(.write, request, commandFlags: fua ? [.fua] : [])
        case .discard:
            // Discard is advisory: a server that cannot trim ignores it, as in QEMU.
            guard flags.contains(.sendTrim) else { return .ok }
            return await ranged(.trim, request, commandFlags: request.flags.contains(.fua) && flags.contains(.sendFUA) ? [.fua] : [])
        case .writeZeroes:
            return await writeZeroes(request)
        case .flush:
            return .ok  // answered above
        case .spliceRead:
            return .notSupported  // the data arrives through this process's memory anyway
        }
    }

    private nonisolated(nonsending) func writeZeroes(_ request: BlockRequest) async -> IOStatus {
        let flags = state.flags
        let fua = request.flags.contains(.fua)
        guard flags.contains(.sendWriteZeroes) else {
            if request.flags.contains(.noFallback) { return .notSupported }
            return await writeZeroBuffers(request, fua: fua)
        }
        var commandFlags: NBDCommandFlags = request.flags.contains(.mayUnmap) ? [] : [.noHole]
        if request.flags.contains(.noFallback) {
            // The caller wants it fast or not at all: FAST_ZERO makes the server refuse slow zeroing.
            guard flags.contains(.sendFastZero) else { return .notSupported }
            commandFlags.insert(.fastZero)
        }
        if fua && flags.contains(.sendFUA) { commandFlags.insert(.fua) }
        let status = await ranged(.writeZeroes, request, commandFlags: commandFlags)
        if status.isOK && fua && !flags.contains(.sendFUA) && flags.contains(.sendFlush) {
            return await connection.execute(.flush, offset: 0, length: 0).0
        }
        return status
    }

    /// Without WRITE_ZEROES the zeros go over the wire as writes, as QEMU's generic fallback.
    private nonisolated(nonsending) func writeZeroBuffers(_ request: BlockRequest, fua: Bool) async -> IOStatus {
        let zeroes = state.zeroes
        let piece = min(zeroes.count, state.maximumPayloadBytes) / Int(state.minimumBlockBytes) * Int(state.minimumBlockBytes)
        let commandFlags: NBDCommandFlags = fua && state.flags.contains(.sendFUA) ? [.fua] : []
        var done = 0
        while done < request.lengthBytes {
            let count = min(piece, request.lengthBytes - done)
            let status = await connection.execute(.write, flags: commandFlags, offset: request.offsetBytes + UInt64(done),
                                                  length: UInt32(count), buffer: zeroes.slice(from: 0, count: count)).0
            guard status.isOK else { return status }
            done += count
        }
        if fua && !state.flags.contains(.sendFUA) && state.flags.contains(.sendFlush) {
            return await connection.execute(.flush, offset: 0, length: 0).0
        }
        return .ok
    }

    /// A read or write in pieces of at most the server's maximum payload.
    private nonisolated(nonsending) func transfer(_ command: NBDCommand, _ request: BlockRequest, commandFlags: NBDCommandFlags) async -> IOStatus {
        var done = 0
        while done < request.lengthBytes {
            let count = min(state.maximumPayloadBytes, request.lengthBytes - done)
            let status = await connection.execute(command, flags: commandFlags, offset: request.offsetBytes + UInt64(done),
                                                  length: UInt32(count), buffer: request.buffer.slice(from: done, count: count)).0
            guard status.isOK else { return status }
            done += count
        }
        return .ok
    }

    /// TRIM or WRITE_ZEROES (no payload) in pieces a 32-bit length holds.
    private nonisolated(nonsending) func ranged(_ command: NBDCommand, _ request: BlockRequest, commandFlags: NBDCommandFlags) async -> IOStatus {
        var done: UInt64 = 0
        let total = UInt64(request.lengthBytes)
        while done < total {
            let count = min(NBDClientNodeState.maxUnpayloadedBytes, total - done)
            let status = await connection.execute(command, flags: commandFlags, offset: request.offsetBytes + done, length: UInt32(count)).0
            guard status.isOK else { return status }
            done += count
        }
        return .ok
    }
}
