import CStrataShim
import Glibc
import StrataGraph
import StrataRuntime

/// A file node on one queue: every request is io_uring SQEs on the queue executor's ring, awaited
/// on that executor, so nothing leaves the queue's thread and nothing is allocated per request.
///
/// O_DIRECT requests whose memory, offset or length is misaligned go through a bounce buffer
/// (read-modify-write for the partial blocks at a write's ends). Unlike QEMU, which serialises a
/// read-modify-write against overlapping requests, this does not: while a misaligned O_DIRECT
/// write is in flight, another request writing to one of its partial blocks can lose its bytes
/// (even bytes the misaligned write does not cover). Callers keep such requests apart.
actor FileNodeInstance: BlockNode {
    /// The most one SQE moves: the length field is 32 bits, and this keeps pieces aligned.
    private static let maxTransferBytes = 1 << 30
    private static let bounceBufferCount = 4
    private static let bounceBufferBytes = 256 << 10

    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let executor: QueueExecutor
    private let state: FileNodeState
    private let fd: Int32
    private let direct: Bool
    private let requestMask: UInt64
    private let memoryMask: UInt
    private let dsyncFlag: Int32
    private let punchHoleMode: Int32
    private let zeroRangeMode: Int32
    /// Made at init for O_DIRECT nodes; for buffered ones only when a write-zeroes falls back.
    private var pool: BounceBufferPool?
    /// Cleared when the kernel refuses RWF_DSYNC; FUA then becomes write + flush.
    private var dsyncSupported = true
    /// Cleared when the file system refuses FALLOC_FL_ZERO_RANGE (QEMU's has_write_zeroes).
    private var zeroRangeSupported = true

    init(state: FileNodeState, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.executor = queue.executor
        self.state = state
        self.fd = state.fd
        self.direct = state.direct
        self.requestMask = UInt64(state.alignment.request - 1)
        self.memoryMask = UInt(state.alignment.memory - 1)
        self.dsyncFlag = strata_rwf_dsync()
        self.punchHoleMode = strata_falloc_punch_hole() | strata_falloc_keep_size()
        self.zeroRangeMode = strata_falloc_zero_range()
        if state.direct { pool = Self.makePool(state: state, executor: queue.executor) }
    }

    private static func makePool(state: FileNodeState, executor: QueueExecutor) -> BounceBufferPool {
        BounceBufferPool(count: bounceBufferCount, bufferSize: bounceBufferBytes,
                         alignment: max(4096, state.alignment.memory, state.alignment.request),
                         numaNode: executor.numaNode)
    }

    private func bouncePool() -> BounceBufferPool {
        if let pool { return pool }
        let created = Self.makePool(state: state, executor: executor)
        pool = created
        return created
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        // Reads that need no bounce buffer touch no mutable state: they stay on the caller's
        // executor (this node's own) without a hop into isolation and back.
        if request.operation == .read, request.lengthBytes > 0, let base = request.buffer.base,
           request.validatedEnd != nil, !needsBounce(UnsafeRawPointer(base), request.offsetBytes, request.lengthBytes) {
            let status = await readFully(into: base, length: request.lengthBytes, at: request.offsetBytes)
            if status.isOK { state.counters.recordRead(bytes: request.lengthBytes) }
            return status
        }
        return await serve(request)
    }

    /// The request on this instance's isolation: the bounce pool and capability flags are its state.
    private func serve(_ request: BlockRequest) async -> IOStatus {
        if request.operation == .flush { return await flush() }
        guard let end = request.validatedEnd else { return .invalid }
        if request.operation.isWrite && state.readOnly { return .readOnly }
        // A protocol has no clusters to compress.
        if request.flags.contains(.compressed) { return .notSupported }
        if request.lengthBytes == 0 { return .ok }
        switch request.operation {
        case .read: return await read(request)
        case .write: return await write(request, end: end)
        case .writeZeroes: return await writeZeroes(request, end: end)
        case .discard: return await discard(request)
        case .flush: return await flush()
        case .spliceRead: return await spliceRead(request)
        }
    }

    /// Moves the range from the page cache into the caller's pipe: no copy into user memory.
    /// O_DIRECT files have no page cache to lend pages from, and a range past the end of the file
    /// would need zeros the pipe cannot be given without a buffer: both answer ENOTSUP first.
    private func spliceRead(_ request: BlockRequest) async -> IOStatus {
        guard !direct, request.pipeFd >= 0, let end = request.endBytes, end <= state.sizeBytes else { return .notSupported }
        let fd = self.fd
        let pipeFd = request.pipeFd
        var done = 0
        while done < request.lengthBytes {
            let count = UInt32(min(request.lengthBytes - done, Self.maxTransferBytes))
            let position = Int64(request.offsetBytes) + Int64(done)
            let result = await executor.perform { io_uring_prep_splice($0, fd, position, pipeFd, -1, count, 0) }
            if result > 0 {
                done += Int(result)
            } else if result == 0 {
                // The file shrank under the splice: part of the range is in the pipe already.
                return IOStatus(errno: EAGAIN)
            } else if result != -EINTR && result != -EAGAIN {
                return IOStatus(kernelResult: result)
            }
        }
        state.counters.recordRead(bytes: request.lengthBytes)
        return .ok
    }

    // MARK: Read

    private func read(_ request: BlockRequest) async -> IOStatus {
        // A non-empty validated request has a buffer covering it, so base is set.
        guard let base = request.buffer.base else { return .invalid }
        let status: IOStatus
        if needsBounce(UnsafeRawPointer(base), request.offsetBytes, request.lengthBytes) {
            state.counters.recordBounce()
            status = await bouncedRead(into: base, length: request.lengthBytes, at: request.offsetBytes)
        } else {
            status = await readFully(into: base, length: request.lengthBytes, at: request.offsetBytes)
        }
        if status.isOK { state.counters.recordRead(bytes: request.lengthBytes) }
        return status
    }

    /// Reads until `length` bytes are in or the file ends; what lies past the end reads as zeros.
    private nonisolated(nonsending) func readFully(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        assert(!needsBounce(UnsafeRawPointer(base), offset, length), "an O_DIRECT read reaches the ring aligned")
        let fd = self.fd
        var done = 0
        while done < length {
            let target = base + done
            let count = UInt32(min(length - done, Self.maxTransferBytes))
            let position = offset + UInt64(done)
            let result = await executor.perform { io_uring_prep_read($0, fd, target, count, position) }
            if result > 0 {
                done += Int(result)
            } else if result == 0 {
                break
            } else if result == -EINTR || result == -EAGAIN {
                continue
            } else if result == -EINVAL && direct && done > 0 {
                // QEMU's rule: after a short O_DIRECT read the next offset is misaligned, and
                // short O_DIRECT reads happen only at the end of the file.
                break
            } else {
                return IOStatus(kernelResult: result)
            }
        }
        if done < length {
            (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: length - done)
        }
        return .ok
    }

    private func bouncedRead(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        let end = offset + UInt64(length)
        let alignedStart = offset & ~requestMask
        let alignedEnd = (end + requestMask) & ~requestMask
        let pool = bouncePool()
        let bounce = pool.take()
        defer { pool.give(bounce) }
        var pieceStart = alignedStart
        while pieceStart < alignedEnd {
            let pieceEnd = min(pieceStart + UInt64(pool.bufferSize), alignedEnd)
            let status = await readFully(into: bounce.base, length: Int(pieceEnd - pieceStart), at: pieceStart)
            guard status.isOK else { return status }
            let copyStart = max(offset, pieceStart)
            let copyEnd = min(end, pieceEnd)
            (base + Int(copyStart - offset)).copyMemory(from: bounce.base + Int(copyStart - pieceStart),
                                                        byteCount: Int(copyEnd - copyStart))
            pieceStart = pieceEnd
        }
        return .ok
    }

    // MARK: Write

    private func write(_ request: BlockRequest, end: UInt64) async -> IOStatus {
        guard let base = request.buffer.base else { return .invalid }
        let source = UnsafeRawPointer(base)
        let writeThrough = state.writeThrough
        // cache=unsafe drops durability requests as it drops flushes.
        let wantsFUA = request.flags.contains(.fua) && !state.noFlush
        var useDsync = wantsFUA && !writeThrough && dsyncSupported
        var flushAfter = writeThrough || (wantsFUA && !useDsync)
        let bounced = needsBounce(source, request.offsetBytes, request.lengthBytes)
        if bounced { state.counters.recordBounce() }
        var status = await writeData(from: source, length: request.lengthBytes, at: request.offsetBytes, bounced: bounced, dsync: useDsync)
        if useDsync && status.errno == EOPNOTSUPP {
            // Writes are idempotent: redo it without the flag, then flush.
            dsyncSupported = false
            useDsync = false
            flushAfter = true
            status = await writeData(from: source, length: request.lengthBytes, at: request.offsetBytes, bounced: bounced, dsync: false)
        }
        guard status.isOK else { return status }
        // A bounced write rewrote whole blocks, which may extend the file to the block boundary.
        state.noteDataChanged(endBytes: bounced ? (end + requestMask) & ~requestMask : end)
        state.counters.recordWrite(bytes: request.lengthBytes)
        return flushAfter ? await flush() : .ok
    }

    private func writeData(from source: UnsafeRawPointer, length: Int, at offset: UInt64, bounced: Bool, dsync: Bool) async -> IOStatus {
        bounced
            ? await bouncedWrite(from: source, length: length, at: offset, dsync: dsync)
            : await writeFully(from: source, length: length, at: offset, dsync: dsync)
    }

    /// Writes all `length` bytes, resubmitting after short writes.
    private func writeFully(from source: UnsafeRawPointer, length: Int, at offset: UInt64, dsync: Bool) async -> IOStatus {
        assert(!needsBounce(source, offset, length), "an O_DIRECT write reaches the ring aligned")
        let fd = self.fd
        let flags = dsync ? dsyncFlag : 0
        var done = 0
        while done < length {
            let data = source + done
            let count = UInt32(min(length - done, Self.maxTransferBytes))
            let position = offset + UInt64(done)
            let result = await executor.perform { sqe in
                io_uring_prep_write(sqe, fd, data, count, position)
                if flags != 0 { strata_sqe_set_rw_flags(sqe, flags) }
            }
            if result > 0 {
                done += Int(result)
            } else if result == 0 {
                return .invalid  // no progress: QEMU's handle_aiocb_rw answers a stuck short write with EINVAL
            } else if result == -EINTR || result == -EAGAIN {
                continue
            } else {
                return IOStatus(kernelResult: result)
            }
        }
        return .ok
    }

    /// Read-modify-write through an aligned buffer, one buffer-sized piece at a time. Only the
    /// first piece can start inside a block and only the last can end inside one; those blocks are
    /// read first so the bytes around the request survive.
    private func bouncedWrite(from source: UnsafeRawPointer, length: Int, at offset: UInt64, dsync: Bool) async -> IOStatus {
        let block = requestMask + 1
        let end = offset + UInt64(length)
        let alignedStart = offset & ~requestMask
        let alignedEnd = (end + requestMask) & ~requestMask
        let pool = bouncePool()
        let bounce = pool.take()
        defer { pool.give(bounce) }
        var pieceStart = alignedStart
        while pieceStart < alignedEnd {
            let pieceEnd = min(pieceStart + UInt64(pool.bufferSize), alignedEnd)
            let dataStart = max(offset, pieceStart)
            let dataEnd = min(end, pieceEnd)
            let partialHead = dataStart > pieceStart
            if partialHead {
                let status = await readFully(into: bounce.base, length: Int(block), at: pieceStart)
                guard status.isOK else { return status }
            }
            let tailBlock = pieceEnd - block
            if dataEnd < pieceEnd && !(partialHead && tailBlock == pieceStart) {
                let status = await readFully(into: bounce.base + Int(tailBlock - pieceStart), length: Int(block), at: tailBlock)
                guard status.isOK else { return status }
            }
            (bounce.base + Int(dataStart - pieceStart)).copyMemory(from: source + Int(dataStart - offset),
                                                                   byteCount: Int(dataEnd - dataStart))
            let status = await writeFully(from: UnsafeRawPointer(bounce.base), length: Int(pieceEnd - pieceStart), at: pieceStart, dsync: dsync)
            guard status.isOK else { return status }
            pieceStart = pieceEnd
        }
        return .ok
    }

    // MARK: Write zeroes and discard

    /// QEMU's order: punch a hole when unmapping is allowed, else FALLOC_FL_ZERO_RANGE, else
    /// (unless the request forbids it) write zero buffers.
    private func writeZeroes(_ request: BlockRequest, end: UInt64) async -> IOStatus {
        let offset = request.offsetBytes
        let length = request.lengthBytes
        var zeroed = false
        // QEMU drops MAY_UNMAP unless discard=unmap. A hole keeps the size, so a range past the
        // end of the file takes the zero-range path, which extends it.
        if request.flags.contains(.mayUnmap) && state.unmapOnDiscard && end <= state.sizeBytes {
            let result = await fallocate(mode: punchHoleMode, offset: offset, length: length)
            if result == 0 {
                zeroed = true
            } else if result != -EOPNOTSUPP && result != -EINVAL && result != -EBUSY {
                return IOStatus(kernelResult: result)
            }
        }
        if !zeroed && zeroRangeSupported {
            let result = await fallocate(mode: zeroRangeMode, offset: offset, length: length)
            if result == 0 {
                zeroed = true
            } else if result == -EOPNOTSUPP {
                zeroRangeSupported = false
            } else if result != -EINVAL {
                // Some file systems refuse unaligned ranges with EINVAL: that falls back too.
                return IOStatus(kernelResult: result)
            }
        }
        var fileEnd = end
        if !zeroed {
            if request.flags.contains(.noFallback) { return .notSupported }
            let status = await writeZeroBuffers(offset: offset, length: length)
            guard status.isOK else { return status }
            if direct && (end & requestMask) != 0 { fileEnd = (end + requestMask) & ~requestMask }
        }
        state.noteDataChanged(endBytes: fileEnd)
        state.counters.recordZeroWrite()
        let wantsFUA = request.flags.contains(.fua) && !state.noFlush
        return state.writeThrough || wantsFUA ? await flush() : .ok
    }

    /// Writes zeros from one zeroed pool buffer. The first piece ends on a block boundary so the
    /// middle pieces go straight to the file without bouncing.
    private func writeZeroBuffers(offset: UInt64, length: Int) async -> IOStatus {
        let pool = bouncePool()
        let zeros = pool.take()
        defer { pool.give(zeros) }
        zeros.base.initializeMemory(as: UInt8.self, repeating: 0, count: min(pool.bufferSize, length))
        let source = UnsafeRawPointer(zeros.base)
        var done = 0
        while done < length {
            let position = offset + UInt64(done)
            let count = min(pool.bufferSize - Int(position & requestMask), length - done)
            let bounced = needsBounce(source, position, count)
            let status = await writeData(from: source, length: count, at: position, bounced: bounced, dsync: false)
            guard status.isOK else { return status }
            done += count
        }
        return .ok
    }

    private func discard(_ request: BlockRequest) async -> IOStatus {
        guard state.unmapOnDiscard else { return .ok }  // discard=ignore, QEMU's default
        let result = await fallocate(mode: punchHoleMode, offset: request.offsetBytes, length: request.lengthBytes)
        switch -result {
        case 0:
            state.noteDataChanged(endBytes: 0)
            state.counters.recordDiscard()
            return .ok
        case EOPNOTSUPP, EINVAL, ENOSYS, ENOTTY, ENODEV:
            // Discard is advisory: QEMU maps these to ENOTSUP, which bdrv_co_pdiscard ignores.
            return .ok
        default:
            return IOStatus(kernelResult: result)
        }
    }

    private func fallocate(mode: Int32, offset: UInt64, length: Int) async -> Int32 {
        let fd = self.fd
        while true {
            let result = await executor.perform { io_uring_prep_fallocate($0, fd, mode, off_t(offset), off_t(length)) }
            if result != -EINTR { return result }
        }
    }

    // MARK: Flush

    /// fdatasync through the ring. No-op under cache.no-flush and on read-only nodes (as QEMU's
    /// bdrv_co_flush), and when no data changed since the last completed flush.
    private func flush() async -> IOStatus {
        if state.noFlush || state.readOnly { return .ok }
        let failed = state.pageCacheErrno
        if failed != 0 { return IOStatus(errno: failed) }
        guard let generation = state.flushTarget() else { return .ok }
        let fd = self.fd
        state.counters.recordFlush()
        var result: Int32
        repeat {
            result = await executor.perform { io_uring_prep_fsync($0, fd, UInt32(IORING_FSYNC_DATASYNC)) }
        } while result == -EINTR
        if result < 0 {
            // O_DIRECT bypasses the page cache, so only buffered nodes lose trust in it.
            if !direct { state.notePageCacheInconsistent(errno: -result) }
            return IOStatus(kernelResult: result)
        }
        state.noteFlushCompleted(generation: generation)
        return .ok
    }

    // MARK: Alignment

    @inline(__always)
    private nonisolated func needsBounce(_ base: UnsafeRawPointer, _ offset: UInt64, _ length: Int) -> Bool {
        direct && ((UInt(bitPattern: base) & memoryMask) != 0 || (offset & requestMask) != 0 || (UInt64(length) & requestMask) != 0)
    }
}
