import CIscsi
import Glibc
import StrataGraph
import StrataRuntime

/// An iscsi node on one queue: each request becomes SCSI commands on this queue's session:
/// READ(16)/WRITE(16) split at the LUN's maximum transfer, SYNCHRONIZE CACHE(16), UNMAP and
/// WRITE SAME(16). The replies come back inside `iscsi_service` on this queue's executor.
///
/// Requests that are not whole blocks go through a bounce buffer, a misaligned write as a
/// read-modify-write of its edge blocks. Like the file node's O_DIRECT bounce, this does not
/// serialise overlapping requests: callers keep them apart.
actor IscsiNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let state: IscsiNodeState
    private nonisolated let session: IscsiSession
    private nonisolated let executor: QueueExecutor
    private nonisolated let blockBytes: Int
    private nonisolated let maxTransferBytes: Int

    /// A cap for targets that give no maximum transfer: 8 MiB a command.
    static let defaultMaxTransferBytes = 8 << 20

    init(state: IscsiNodeState, session: IscsiSession, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.state = state
        self.session = session
        self.executor = queue.executor
        self.blockBytes = state.geometry.blockBytes
        let limit = Int(state.geometry.maxTransferBlocks) * state.geometry.blockBytes
        let cap = limit > 0 ? min(limit, Self.defaultMaxTransferBytes) : Self.defaultMaxTransferBytes
        self.maxTransferBytes = max(state.geometry.blockBytes, cap - cap % state.geometry.blockBytes)
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing { .suspend }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if let answer = request.leafPrologue(sizeBytes: state.sizeBytes, readOnly: state.readOnly) { return answer }
        let offset = request.offsetBytes
        let length = request.lengthBytes
        let fua = request.flags.contains(.fua)
        switch request.operation {
        case .read:
            guard let base = request.buffer.base else { return .invalid }
            return isAligned(offset, length) ? await read(at: offset, length: length, into: base)
                                             : await readUnaligned(at: offset, length: length, into: base)
        case .write:
            guard let base = request.buffer.base else { return .invalid }
            return isAligned(offset, length) ? await write(at: offset, length: length, from: base, fua: fua)
                                             : await writeUnaligned(at: offset, length: length, from: base, fua: fua)
        case .flush:
            return await flush()
        case .discard:
            return await discard(at: offset, length: length)
        case .writeZeroes:
            return await writeZeroes(at: offset, length: length, mayUnmap: request.flags.contains(.mayUnmap), fua: fua)
        case .spliceRead:
            return .notSupported
        }
    }

    private nonisolated func isAligned(_ offset: UInt64, _ length: Int) -> Bool {
        offset % UInt64(blockBytes) == 0 && length % blockBytes == 0
    }

    // MARK: Commands

    /// One command, tried again on a unit attention or a busy target as QEMU does. `readsData`:
    /// a target that sent less than asked (residual underflow) has not done the read.
    private nonisolated(nonsending) func run(
        readsData: Bool = false,
        _ start: (OpaquePointer, iscsi_command_cb, UnsafeMutableRawPointer) -> UnsafeMutablePointer<scsi_task>?,
        prepare: (UnsafeMutablePointer<scsi_task>) -> Void = { _ in }
    ) async -> IOStatus {
        var attempt = 0
        while true {
            let completion = await session.execute(start, prepare: prepare)
            var verdict = IscsiStatusMapping.verdict(completion, attempt: attempt)
            if readsData, verdict == .done(.ok), let task = completion.task, task.pointee.residual_status == SCSI_RESIDUAL_UNDERFLOW {
                verdict = .done(.ioError)
            }
            completion.release()
            switch verdict {
            case .done(let status):
                return status
            case .retryNow:
                attempt += 1
            case .retryAfter(let nanoseconds):
                attempt += 1
                await executor.sleep(untilNs: MonotonicClock.now() + nanoseconds)
            }
        }
    }

    private nonisolated(nonsending) func read(at offset: UInt64, length: Int, into base: UnsafeMutableRawPointer) async -> IOStatus {
        let lun = session.location.lun
        let blockSize = Int32(blockBytes)
        var done = 0
        while done < length {
            let count = min(maxTransferBytes, length - done)
            let lba = (offset + UInt64(done)) / UInt64(blockBytes)
            let target = (base + done).assumingMemoryBound(to: UInt8.self)
            let status = await run(readsData: true, { iscsi_read16_task($0, lun, lba, UInt32(count), blockSize, 0, 0, 0, 0, 0, $1, $2) },
                                   prepare: { _ = scsi_task_add_data_in_buffer($0, Int32(count), target) })
            guard status.isOK else { return status }
            done += count
        }
        return .ok
    }

    private nonisolated(nonsending) func write(at offset: UInt64, length: Int, from base: UnsafeRawPointer, fua: Bool) async -> IOStatus {
        let lun = session.location.lun
        let blockSize = Int32(blockBytes)
        let forceUnitAccess: Int32 = fua ? 1 : 0
        var done = 0
        while done < length {
            let count = min(maxTransferBytes, length - done)
            let lba = (offset + UInt64(done)) / UInt64(blockBytes)
            // libiscsi only reads the data: its API takes it as mutable.
            let source = UnsafeMutablePointer(mutating: (base + done).assumingMemoryBound(to: UInt8.self))
            let status = await run { iscsi_write16_task($0, lun, lba, source, UInt32(count), blockSize, 0, 0, forceUnitAccess, 0, 0, $1, $2) }
            guard status.isOK else { return status }
            done += count
        }
        return .ok
    }

    private nonisolated(nonsending) func flush() async -> IOStatus {
        let lun = session.location.lun
        return await run { iscsi_synchronizecache16_task($0, lun, 0, 0, 0, 0, $1, $2) }
    }

    /// UNMAP of the whole blocks inside the range where the LUN can (LBPU); elsewhere a discard
    /// is only advice and succeeds doing nothing, as in QEMU.
    private nonisolated(nonsending) func discard(at offset: UInt64, length: Int) async -> IOStatus {
        guard state.geometry.canUnmap else { return .ok }
        let block = UInt64(blockBytes)
        var lba = (offset + block - 1) / block
        let endLBA = (offset + UInt64(length)) / block
        let most = UInt64(state.geometry.maxUnmapBlocks > 0 ? state.geometry.maxUnmapBlocks : UInt32.max)
        let lun = session.location.lun
        while lba < endLBA {
            let count = min(endLBA - lba, most)
            var descriptor = unmap_list(lba: lba, num: UInt32(count))
            let status = await run { iscsi_unmap_task($0, lun, 0, 0, &descriptor, 1, $1, $2) }
            guard status.isOK else { return status }
            lba += count
        }
        return .ok
    }

    /// WRITE SAME(16) of a zero block, unmapping where allowed and the LUN reads unmapped blocks
    /// as zeros; writes of zeros when the target refuses WRITE SAME, and for partial blocks.
    private nonisolated(nonsending) func writeZeroes(at offset: UInt64, length: Int, mayUnmap: Bool, fua: Bool) async -> IOStatus {
        let block = UInt64(blockBytes)
        let end = offset + UInt64(length)
        let firstWhole = (offset + block - 1) / block * block
        let endWhole = end / block * block
        guard firstWhole < endWhole else { return await writeZeroBytes(at: offset, length: length, fua: fua) }
        if firstWhole > offset {
            let status = await writeZeroBytes(at: offset, length: Int(firstWhole - offset), fua: fua)
            guard status.isOK else { return status }
        }
        var status = IOStatus.notSupported
        if state.writeSameWorks.load(ordering: .relaxed) {
            status = await writeSame(fromLBA: firstWhole / block, blocks: (endWhole - firstWhole) / block,
                                     unmap: mayUnmap && state.geometry.canWriteSameUnmap && state.geometry.unmappedReadZero)
            if status == .invalid {
                // INVALID OPERATION CODE or FIELD: this target has no WRITE SAME(16).
                state.writeSameWorks.store(false, ordering: .relaxed)
                status = .notSupported
            }
        }
        if status == .notSupported {
            status = await writeZeroBytes(at: firstWhole, length: Int(endWhole - firstWhole), fua: fua)
        }
        guard status.isOK else { return status }
        if end > endWhole { return await writeZeroBytes(at: endWhole, length: Int(end - endWhole), fua: fua) }
        return .ok
    }

    private nonisolated(nonsending) func writeSame(fromLBA first: UInt64, blocks: UInt64, unmap: Bool) async -> IOStatus {
        let lun = session.location.lun
        let zero = state.zeroes.base!.assumingMemoryBound(to: UInt8.self)
        let blockLength = UInt32(blockBytes)
        let most = state.geometry.maxWriteSameBlocks > 0 ? min(state.geometry.maxWriteSameBlocks, UInt64(UInt32.max)) : 65536
        let unmapBit: Int32 = unmap ? 1 : 0
        var lba = first
        while lba < first + blocks {
            let count = min(first + blocks - lba, most)
            let status = await run {
                iscsi_writesame16_task($0, lun, lba, zero, blockLength, UInt32(count), 0, unmapBit, 0, 0, $1, $2)
            }
            guard status.isOK else { return status }
            lba += count
        }
        return .ok
    }

    private nonisolated(nonsending) func writeZeroBytes(at offset: UInt64, length: Int, fua: Bool) async -> IOStatus {
        var done = 0
        while done < length {
            let count = min(IscsiNodeState.zeroBufferBytes, length - done)
            let position = offset + UInt64(done)
            let status = isAligned(position, count) ? await write(at: position, length: count, from: state.zeroes.base!, fua: fua)
                                                    : await writeUnaligned(at: position, length: count, from: state.zeroes.base!, fua: fua)
            guard status.isOK else { return status }
            done += count
        }
        return .ok
    }

    // MARK: Partial blocks

    private nonisolated func alignedSpan(_ offset: UInt64, _ length: Int) -> (start: UInt64, length: Int) {
        let block = UInt64(blockBytes)
        let start = offset / block * block
        let end = (offset + UInt64(length) + block - 1) / block * block
        return (start, Int(end - start))
    }

    private nonisolated(nonsending) func readUnaligned(at offset: UInt64, length: Int, into base: UnsafeMutableRawPointer) async -> IOStatus {
        let span = alignedSpan(offset, length)
        let bounce = UnsafeMutableRawPointer.allocate(byteCount: span.length, alignment: 4096)
        defer { bounce.deallocate() }
        let status = await read(at: span.start, length: span.length, into: bounce)
        guard status.isOK else { return status }
        base.copyMemory(from: bounce + Int(offset - span.start), byteCount: length)
        return .ok
    }

    /// Reads the edge blocks, lays the data over them, writes the whole span.
    private nonisolated(nonsending) func writeUnaligned(at offset: UInt64, length: Int, from base: UnsafeRawPointer, fua: Bool) async -> IOStatus {
        let span = alignedSpan(offset, length)
        let bounce = UnsafeMutableRawPointer.allocate(byteCount: span.length, alignment: 4096)
        defer { bounce.deallocate() }
        let head = Int(offset - span.start)
        let tailStart = head + length
        if head > 0 {
            let status = await read(at: span.start, length: blockBytes, into: bounce)
            guard status.isOK else { return status }
        }
        let lastBlock = span.length - blockBytes
        if tailStart < span.length && (lastBlock > 0 || head == 0) {
            let status = await read(at: span.start + UInt64(lastBlock), length: blockBytes, into: bounce + lastBlock)
            guard status.isOK else { return status }
        }
        (bounce + head).copyMemory(from: base, byteCount: length)
        return await write(at: span.start, length: span.length, from: bounce, fua: fua)
    }
}
