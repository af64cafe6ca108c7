import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

// Serving: each request becomes one graph request; read replies choose data, holes or splice.
extension NBDConnection {
    func serve(_ request: NBDRequest, verdict: NBDRequestVerdict, worker: NBDRequestWorker) async {
        let structured = session!.structuredReplies
        guard worker.reserve(0) else {
            // Not even a reply fits: there is no way to answer, so the connection ends.
            close()
            return
        }
        if case .reject(let error, let message) = verdict {
            refuse(request, error: error, message: message, worker: worker, structured: structured)
            return
        }
        let status: IOStatus
        switch request.command! {
        case .read:
            await serveRead(request, worker: worker, structured: structured)
            return
        case .blockStatus:
            await serveBlockStatus(request, worker: worker)
            return
        case .write:
            status = await submit(.write, request, buffer: IOBuffer(base: worker.data, count: Int(request.length)),
                                  flags: request.flags.contains(.fua) ? .fua : [])
        case .flush:
            status = await submit(.flush, request, flags: [])
        case .trim:
            status = await submit(.discard, request, flags: request.flags.contains(.fua) ? .fua : [])
        case .writeZeroes:
            var flags: RequestFlags = request.flags.contains(.noHole) ? [] : .mayUnmap
            if request.flags.contains(.fua) { flags.insert(.fua) }
            if request.flags.contains(.fastZero) { flags.insert(.noFallback) }
            status = await submit(.writeZeroes, request, flags: flags)
        case .cache:
            status = await serveCache(request, worker: worker)
        case .disconnect, .resize:
            // DISC never reaches here (it ends the receive loop); RESIZE is refused by validation.
            status = .invalid
        }
        if status.isOK {
            worker.simpleReply(cookie: request.cookie, error: nil)
        } else {
            refuse(request, error: NBDErrno(linuxErrno: status.errno), message: "\(request.command!) failed: \(status)",
                   worker: worker, structured: structured)
        }
    }

    func refuse(_ request: NBDRequest, error: NBDErrno, message: String, worker: NBDRequestWorker, structured: Bool) {
        if structured {
            worker.errorReply(cookie: request.cookie, error: error, message: message)
        } else {
            worker.simpleReply(cookie: request.cookie, error: error)
        }
    }

    func submit(_ operation: BlockOperation, _ request: NBDRequest, buffer: IOBuffer = .empty, flags: RequestFlags) async -> IOStatus {
        // A zero-length request has nothing to do; the spec leaves it to the server, and QEMU succeeds.
        if operation != .flush && request.length == 0 { return .ok }
        return await port!.submit(BlockRequest(operation: operation, offsetBytes: request.offset, lengthBytes: Int(request.length),
                                               buffer: buffer, flags: flags, tag: tenantTag, submitNs: 0))
    }

    func serveRead(_ request: NBDRequest, worker: NBDRequestWorker, structured: Bool) async {
        let length = Int(request.length)
        if length == 0 {
            if structured { worker.noneReply(cookie: request.cookie) } else { worker.simpleReply(cookie: request.cookie, error: nil) }
            return
        }
        // Large reads: holes go out as OFFSET_HOLE chunks; all-data ranges are spliced from the
        // page cache to the socket when the node can (no copy through the worker's buffer).
        var sparse = false
        if request.length >= Self.sparseReadMinimum {
            if structured && !request.flags.contains(.dontFragment) {
                await findReadRuns(request, worker: worker)
                sparse = worker.readRuns.count > 1 || worker.readRuns[0].isHole
            }
            if !sparse, await spliceRead(request, worker: worker, structured: structured) { return }
        }
        guard worker.reserve(length) else {
            refuse(request, error: .noMemory, message: "no memory for a \(length)-byte read", worker: worker, structured: structured)
            return
        }
        let status = await submit(.read, request, buffer: IOBuffer(base: worker.data, count: length), flags: [])
        guard status.isOK else {
            refuse(request, error: NBDErrno(linuxErrno: status.errno), message: "read failed: \(status)", worker: worker, structured: structured)
            return
        }
        guard structured else {
            worker.simpleReadReply(cookie: request.cookie, length: length)
            return
        }
        if sparse {
            sparseReadReply(request, worker: worker)
        } else {
            worker.dataReply(cookie: request.cookie, offset: request.offset, length: length)
        }
    }

    /// Splices the range into the worker's pipe; false when the nodes cannot splice this range
    /// (the read then goes through memory).
    func spliceRead(_ request: NBDRequest, worker: NBDRequestWorker, structured: Bool) async -> Bool {
        guard let pipe = worker.pipe(holding: Int(request.length)) else { return false }
        let status = await port!.submit(BlockRequest(operation: .spliceRead, offsetBytes: request.offset,
                                                     lengthBytes: Int(request.length), tag: tenantTag, pipeFd: pipe.write))
        guard status.isOK else {
            // ENOTSUP comes before anything moved; any other failure may leave bytes in the pipe.
            if status != .notSupported { worker.closePipe() }
            return false
        }
        worker.splicedReadReply(cookie: request.cookie, offset: request.offset, length: Int(request.length), structured: structured)
        return true
    }

    /// The read range as runs of data and holes (zeros) in `worker.readRuns`, from the export's
    /// block status, at most `maxReadChunks` of them (the rest counts as data).
    func findReadRuns(_ request: NBDRequest, worker: NBDRequestWorker) async {
        let state = export!.state
        let end = request.offset + UInt64(request.length)
        var cursor = request.offset
        worker.readRuns.removeAll(keepingCapacity: true)
        while cursor < end {
            var extent: BlockStatusExtent
            if worker.readRuns.count == NBDRequestWorker.maxReadChunks - 1 {
                extent = .opaqueData(lengthBytes: end - cursor)
            } else {
                do { extent = try await state.chainBlockStatus(offsetBytes: cursor, maxLengthBytes: end - cursor) } catch {
                    extent = .opaqueData(lengthBytes: end - cursor)
                }
                if extent.lengthBytes == 0 { extent = .opaqueData(lengthBytes: end - cursor) }
            }
            let length = min(extent.lengthBytes, end - cursor)
            let isHole = extent.isZero
            if let last = worker.readRuns.last, last.isHole == isHole {
                worker.readRuns[worker.readRuns.count - 1].length += length
            } else {
                worker.readRuns.append((length, isHole))
            }
            cursor += length
        }
    }

    /// Answers a read whose data is already in the worker's buffer with data and hole chunks, as
    /// the export's block status split the range (QEMU's nbd_co_send_sparse_read).
    func sparseReadReply(_ request: NBDRequest, worker: NBDRequestWorker) {
        worker.iovecCount = 0
        worker.splicedBytes = 0
        var offset = request.offset
        let count = worker.readRuns.count
        for index in 0..<count {
            let run = worker.readRuns[index]
            let done = index == count - 1
            let headerOffset = index * 32
            if run.isHole {
                let header = worker.header(at: headerOffset, count: NBDReplyEncoder.offsetHoleBytes)
                NBDReplyEncoder.offsetHole(cookie: request.cookie, offset: offset, holeLength: UInt32(run.length), done: done, into: header)
                worker.append(header.baseAddress!, NBDReplyEncoder.offsetHoleBytes)
            } else {
                let header = worker.header(at: headerOffset, count: NBDReplyEncoder.offsetDataHeaderBytes)
                NBDReplyEncoder.offsetDataHeader(cookie: request.cookie, offset: offset, dataLength: UInt32(run.length), done: done, into: header)
                worker.append(header.baseAddress!, NBDReplyEncoder.offsetDataHeaderBytes)
                worker.append(worker.data + Int(offset - request.offset), Int(run.length))
            }
            offset += run.length
        }
    }

    /// NBD_CMD_CACHE: reads the range so the layers below have it cached; the data is dropped.
    func serveCache(_ request: NBDRequest, worker: NBDRequestWorker) async -> IOStatus {
        let chunk = 1 << 20
        guard worker.reserve(min(Int(request.length), chunk)) else { return IOStatus(errno: ENOMEM) }
        var offset = request.offset
        let end = request.offset + UInt64(request.length)
        while offset < end {
            let length = Int(min(UInt64(chunk), end - offset))
            let status = await port!.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                                         buffer: IOBuffer(base: worker.data, count: length), tag: tenantTag))
            guard status.isOK else { return status }
            offset += UInt64(length)
        }
        return .ok
    }

    /// One BLOCK_STATUS chunk per negotiated context, descriptors in the worker's data area.
    func serveBlockStatus(_ request: NBDRequest, worker: NBDRequestWorker) async {
        let contexts = session!.metaContexts
        let perContext = Self.maxDescriptors * NBDReplyEncoder.blockDescriptorBytes
        guard worker.reserve(contexts.count * perContext) else {
            refuse(request, error: .noMemory, message: "no memory for block status", worker: worker, structured: true)
            return
        }
        let limit = request.flags.contains(.requestOne) ? 1 : Self.maxDescriptors
        let end = request.offset + UInt64(request.length)
        worker.iovecCount = 0
        for (index, context) in contexts.enumerated() {
            let descriptors = worker.data + index * perContext
            let area = UnsafeMutableRawBufferPointer(start: descriptors, count: perContext)
            var count = 0
            var lastFlags: UInt32 = 0
            var lastLength: UInt64 = 0
            var cursor = request.offset
            do {
                while cursor < end {
                    let length: UInt64
                    let flags: UInt32
                    if case .qemuDirtyBitmap(_, let id) = context {
                        let bitmap = export!.bitmaps[Int(id - NBDMetaContext.firstBitmapID)].bits
                        (length, flags) = Self.dirtyRun(bitmap, from: cursor, to: end)
                    } else {
                        let extent = try await export!.state.chainBlockStatus(offsetBytes: cursor, maxLengthBytes: end - cursor)
                        guard extent.lengthBytes > 0 else { break }
                        length = min(extent.lengthBytes, end - cursor)
                        flags = context.statusFlags(for: extent)
                    }
                    if count > 0 && flags == lastFlags {
                        lastLength += length
                    } else {
                        if count == limit { break }
                        if count > 0 { NBDReplyEncoder.blockDescriptor(NBDBlockDescriptor(length: UInt32(lastLength), flags: lastFlags), into: area, at: (count - 1) * 8) }
                        count += 1
                        lastFlags = flags
                        lastLength = length
                    }
                    cursor += length
                }
            } catch {
                refuse(request, error: .io, message: "block status failed: \(error)", worker: worker, structured: true)
                return
            }
            guard count > 0 else {
                refuse(request, error: .invalid, message: "block status past the end of the export", worker: worker, structured: true)
                return
            }
            NBDReplyEncoder.blockDescriptor(NBDBlockDescriptor(length: UInt32(lastLength), flags: lastFlags), into: area, at: (count - 1) * 8)
            let header = worker.header(at: index * 32, count: NBDReplyEncoder.blockStatusHeaderBytes)
            NBDReplyEncoder.blockStatusHeader(cookie: request.cookie, contextID: context.id, descriptorCount: count,
                                              done: index == contexts.count - 1, into: header)
            worker.append(header.baseAddress!, NBDReplyEncoder.blockStatusHeaderBytes)
            worker.append(descriptors, count * NBDReplyEncoder.blockDescriptorBytes)
        }
    }

    /// The run of equally dirty bytes of `bitmap` at `cursor`, up to `end`, and its flags.
    static func dirtyRun(_ bitmap: AtomicBitmap, from cursor: UInt64, to end: UInt64) -> (UInt64, UInt32) {
        let bit = Int(cursor / bitmap.granularity)
        guard bit < bitmap.bitCount else { return (end - cursor, 0) }
        let dirty = bitmap.isSet(bit)
        let next = dirty ? bitmap.nextClear(from: bit) : (bitmap.next(from: bit) ?? bitmap.bitCount)
        let runEnd = min(end, UInt64(next) * bitmap.granularity)
        return (runEnd - cursor, dirty ? NBDMetaContext.stateDirty : 0)
    }
}
