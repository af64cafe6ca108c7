import CStrataShim
import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

/// One client connection, bound to one queue executor: the handshake, then the transmission
/// phase, all socket I/O through that executor's ring and every request submitted into the graph
/// through the export's port for the same queue, so a request never changes thread.
///
/// Requests are pipelined by workers (`NBDRequestWorker`), each serving one request at a time. A
/// worker takes the receive turn, parses the next request from the receive buffer (reading the
/// socket only when the buffer runs dry) and reads a WRITE's payload into its own buffer, then
/// hands the turn on and serves its request while the next worker parses. Replies are combined:
/// the first worker with a reply sends every reply queued meanwhile in one sendmsg. Workers are
/// added while none is waiting for the receive turn, up to `maxWorkers`, so a receive is always
/// outstanding while the client has fewer requests than that in flight.
actor NBDConnection {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    nonisolated let socket: RingSocket
    nonisolated let number: Int
    private let queue: QueueContext
    private let server: NBDServer

    static let receiveCapacity = 64 << 10
    static let maxWorkers = 64
    /// Reads this long or longer look for holes to send as OFFSET_HOLE chunks; shorter ones are
    /// one data chunk, since the block status query would cost more than the zeros it saves.
    static let sparseReadMinimum: UInt32 = 64 << 10
    /// BLOCK_STATUS answers at most this many extents per context (the client asks again).
    static let maxDescriptors = 8192
    /// IOV_MAX: the most iovecs one sendmsg takes.
    static let maxIovecsPerSend = 1024

    private let memory: NBDConnectionMemory
    private var receiveBuffer: UnsafeMutableRawPointer { memory.receiveBuffer }
    private var receiveStart = 0
    private var receiveEnd = 0

    private enum Phase { case handshake, transmission, closing }
    private var phase = Phase.handshake
    private var session: NBDNegotiatedSession?
    private var export: NBDServerExport?
    private var port: BackendPort?

    private var workers: [NBDRequestWorker] = []
    private var liveWorkers = 0
    private var receiving = false
    private var receiveWaiters: [UnsafeContinuation<Bool, Never>] = []
    private var sending = false
    /// Requests read and not yet answered (their replies not queued).
    private var requestsInService = 0
    private var sendFailed = false
    private var pendingReplies: [Int] = []
    private var sendingBatch: [Int] = []
    private var sendIovecs: UnsafeMutablePointer<iovec> { memory.sendIovecs }
    private var message: UnsafeMutablePointer<msghdr> { memory.message }

    init(socket: RingSocket, number: Int, queue: QueueContext, server: NBDServer) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.socket = socket
        self.number = number
        self.queue = queue
        self.server = server
        memory = NBDConnectionMemory(receiveCapacity: Self.receiveCapacity, iovecCapacity: Self.maxWorkers * NBDRequestWorker.maxIovecs)
        workers.reserveCapacity(Self.maxWorkers)
        receiveWaiters.reserveCapacity(Self.maxWorkers)
        pendingReplies.reserveCapacity(Self.maxWorkers)
        sendingBatch.reserveCapacity(Self.maxWorkers)
    }

    /// Negotiates, then starts the first worker; the last worker to stop closes the connection.
    func run() async {
        guard let negotiated = await handshake(), let served = server.exports.served(named: negotiated.export.name) else {
            await finish()
            return
        }
        session = negotiated
        export = served
        port = served.ports[queue.index]
        phase = .transmission
        server.handshakeFinished(number)
        startWorker()
    }

    /// Stops reading requests (server shutdown): requests already read still get their replies.
    func stopReceiving() async {
        guard phase != .closing else { return }
        if phase == .handshake {
            // The handshake's receive is woken by the shutdown below and ends the connection.
            try? await socket.shutdown(Int32(SHUT_RD))
            return
        }
        close()
        if receiving { try? await socket.shutdown(Int32(SHUT_RD)) }
    }

    // MARK: Handshake

    private func handshake() async -> NBDNegotiatedSession? {
        var machine = NBDServerHandshake(catalog: server.exports)
        if server.isShuttingDown { machine.beginShutdown() }
        while true {
            let available = UnsafeRawBufferPointer(start: receiveBuffer + receiveStart, count: receiveEnd - receiveStart)
            let (consumed, events) = machine.feed(available)
            receiveStart += consumed
            let outbound = machine.takeOutbound()
            if !outbound.isEmpty {
                let copy = UnsafeMutableRawPointer.allocate(byteCount: outbound.count, alignment: 16)
                defer { copy.deallocate() }
                outbound.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                do { try await socket.sendAll(from: copy, count: outbound.count) } catch { return nil }
            }
            for event in events {
                switch event {
                case .transmission(let negotiated): return negotiated
                case .aborted: return nil
                case .disconnect(let reason):
                    server.log("NBD client \(number): \(reason)")
                    return nil
                default: break
                }
            }
            guard await receiveMore() else { return nil }
        }
    }

    /// Reads more bytes after those buffered, compacting first; false at EOF or on an error.
    private func receiveMore() async -> Bool {
        if receiveStart == receiveEnd {
            receiveStart = 0
            receiveEnd = 0
        } else if receiveEnd == Self.receiveCapacity {
            let pending = receiveEnd - receiveStart
            (receiveBuffer).copyMemory(from: receiveBuffer + receiveStart, byteCount: pending)
            receiveStart = 0
            receiveEnd = pending
        }
        do {
            let received = try await socket.receive(into: receiveBuffer + receiveEnd, count: Self.receiveCapacity - receiveEnd)
            receiveEnd += received
            return received > 0
        } catch {
            return false
        }
    }

    // MARK: Workers

    private func startWorker() {
        let index = workers.count
        workers.append(NBDRequestWorker())
        liveWorkers += 1
        ThreadAffineExecutors.startTask(serving: queue.executor) { await self.runWorker(index) }
    }

    private func runWorker(_ index: Int) async {
        let worker = workers[index]
        while await takeReceiveTurn() {
            let received = await receiveRequest(into: worker)
            passReceiveTurn()
            guard let (request, verdict) = received else { break }
            requestsInService += 1
            await serve(request, verdict: verdict, worker: worker)
            requestsInService -= 1
            let sent = await sendReply(index)
            worker.trim()
            guard sent else { break }
        }
        liveWorkers -= 1
        if liveWorkers == 0 { await finish() }
    }

    private func takeReceiveTurn() async -> Bool {
        guard phase == .transmission else { return false }
        if !receiving {
            receiving = true
            return true
        }
        return await withUnsafeContinuation { receiveWaiters.append($0) }
    }

    private func passReceiveTurn() {
        guard phase == .transmission else {
            receiving = false
            return
        }
        if let next = receiveWaiters.popLast() {
            // Last in, first out: the worker that finished most recently has its buffer in the
            // CPU cache; cycling through every worker's buffer in turn would keep them all cold.
            next.resume(returning: true)
        } else {
            receiving = false
            if workers.count < Self.maxWorkers { startWorker() }
        }
    }

    /// Ends the transmission phase: no more requests are read; workers finish what they hold.
    private func close() {
        guard phase != .closing else { return }
        phase = .closing
        let waiters = receiveWaiters
        receiveWaiters.removeAll()
        for waiter in waiters { waiter.resume(returning: false) }
    }

    /// Parses the next request, reading the socket as needed; a WRITE's payload lands in the
    /// worker's data area (or is drained when the request is refused). Nil ends the connection:
    /// EOF, a socket error, NBD_CMD_DISC or a protocol violation.
    private func receiveRequest(into worker: NBDRequestWorker) async -> (NBDRequest, NBDRequestVerdict)? {
        while receiveEnd - receiveStart < NBDRequest.headerBytes {
            guard await receiveMore() else {
                close()
                return nil
            }
        }
        let request: NBDRequest
        do {
            request = try NBDRequest.parse(UnsafeRawBufferPointer(start: receiveBuffer + receiveStart, count: NBDRequest.headerBytes))
        } catch {
            server.log("NBD client \(number): \(error.message)")
            close()
            return nil
        }
        receiveStart += NBDRequest.headerBytes
        let verdict = request.validate(for: session!)
        switch verdict {
        case .disconnect(let reason):
            server.log("NBD client \(number): \(reason)")
            close()
            return nil
        case .reject:
            guard await drain(request.payloadBytes) else {
                close()
                return nil
            }
        case .accept:
            if request.command == .disconnect {
                close()
                return nil
            }
            if request.payloadBytes > 0 {
                guard worker.reserve(request.payloadBytes) else {
                    guard await drain(request.payloadBytes) else {
                        close()
                        return nil
                    }
                    return (request, .reject(.noMemory, "no memory for a \(request.payloadBytes)-byte write"))
                }
                guard await receivePayload(into: worker.data, count: request.payloadBytes) else {
                    close()
                    return nil
                }
            }
        }
        return (request, verdict)
    }

    /// Copies what the receive buffer holds, then reads the rest straight into `destination`.
    private func receivePayload(into destination: UnsafeMutableRawPointer, count: Int) async -> Bool {
        let buffered = min(count, receiveEnd - receiveStart)
        destination.copyMemory(from: receiveBuffer + receiveStart, byteCount: buffered)
        receiveStart += buffered
        guard buffered < count else { return true }
        do {
            try await socket.receiveExactly(into: destination + buffered, count: count - buffered)
            return true
        } catch {
            return false
        }
    }

    /// Reads and drops `count` payload bytes of a refused WRITE.
    private func drain(_ count: Int) async -> Bool {
        var remaining = count
        while remaining > 0 {
            if receiveStart == receiveEnd {
                guard await receiveMore() else { return false }
            }
            let taken = min(remaining, receiveEnd - receiveStart)
            receiveStart += taken
            remaining -= taken
        }
        return true
    }

    // MARK: Serving

    private func serve(_ request: NBDRequest, verdict: NBDRequestVerdict, worker: NBDRequestWorker) async {
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

    private func refuse(_ request: NBDRequest, error: NBDErrno, message: String, worker: NBDRequestWorker, structured: Bool) {
        if structured {
            worker.errorReply(cookie: request.cookie, error: error, message: message)
        } else {
            worker.simpleReply(cookie: request.cookie, error: error)
        }
    }

    private func submit(_ operation: BlockOperation, _ request: NBDRequest, buffer: IOBuffer = .empty, flags: RequestFlags) async -> IOStatus {
        // A zero-length request has nothing to do; the spec leaves it to the server, and QEMU succeeds.
        if operation != .flush && request.length == 0 { return .ok }
        return await port!.submit(BlockRequest(operation: operation, offsetBytes: request.offset, lengthBytes: Int(request.length),
                                               buffer: buffer, flags: flags, submitNs: 0))
    }

    private func serveRead(_ request: NBDRequest, worker: NBDRequestWorker, structured: Bool) async {
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
    private func spliceRead(_ request: NBDRequest, worker: NBDRequestWorker, structured: Bool) async -> Bool {
        guard let pipe = worker.pipe(holding: Int(request.length)) else { return false }
        let status = await port!.submit(BlockRequest(operation: .spliceRead, offsetBytes: request.offset,
                                                     lengthBytes: Int(request.length), pipeFd: pipe.write))
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
    private func findReadRuns(_ request: NBDRequest, worker: NBDRequestWorker) async {
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
    private func sparseReadReply(_ request: NBDRequest, worker: NBDRequestWorker) {
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
    private func serveCache(_ request: NBDRequest, worker: NBDRequestWorker) async -> IOStatus {
        let chunk = 1 << 20
        guard worker.reserve(min(Int(request.length), chunk)) else { return IOStatus(errno: ENOMEM) }
        var offset = request.offset
        let end = request.offset + UInt64(request.length)
        while offset < end {
            let length = Int(min(UInt64(chunk), end - offset))
            let status = await port!.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                                         buffer: IOBuffer(base: worker.data, count: length)))
            guard status.isOK else { return status }
            offset += UInt64(length)
        }
        return .ok
    }

    /// One BLOCK_STATUS chunk per negotiated context, descriptors in the worker's data area.
    private func serveBlockStatus(_ request: NBDRequest, worker: NBDRequestWorker) async {
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
                    let extent = try await export!.state.chainBlockStatus(offsetBytes: cursor, maxLengthBytes: end - cursor)
                    guard extent.lengthBytes > 0 else { break }
                    let length = min(extent.lengthBytes, end - cursor)
                    let flags = context.statusFlags(for: extent)
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

    // MARK: Sending

    /// Queues the worker's reply; the first worker finding no send in progress sends every reply
    /// queued until none is left. False when the socket failed (the connection is ending).
    private func sendReply(_ index: Int) async -> Bool {
        guard !sendFailed else { return false }
        // No reply means serving gave up on the connection (no memory even for a header).
        guard workers[index].iovecCount > 0 else { return false }
        pendingReplies.append(index)
        if sending {
            return await withUnsafeContinuation { workers[index].sendWaiter = $0 }
        }
        sending = true
        // While other requests are being served, let those completing in this loop turn queue
        // their replies first: one sendmsg then carries them all and the client wakes once for
        // the lot. Alone (queue depth 1), send at once.
        if requestsInService > 0 { await queue.executor.yield() }
        while !pendingReplies.isEmpty && !sendFailed {
            swap(&pendingReplies, &sendingBatch)
            var count = 0
            for member in sendingBatch where !sendFailed {
                let worker = workers[member]
                for slot in 0..<worker.iovecCount {
                    sendIovecs[count] = worker.iovecs[slot]
                    count += 1
                }
                // Spliced data follows its header: send what is gathered, then move the pipe's
                // bytes to the socket.
                if worker.splicedBytes > 0 {
                    let headersSent = await sendAll(count: count)
                    let dataSent = headersSent ? await sendSpliced(from: worker) : false
                    if !dataSent { sendFailed = true }
                    count = 0
                }
            }
            if !sendFailed {
                let sent = await sendAll(count: count)
                if !sent { sendFailed = true }
            }
            if sendFailed { close() }
            let ok = !sendFailed
            for member in sendingBatch {
                if let waiter = workers[member].sendWaiter {
                    workers[member].sendWaiter = nil
                    waiter.resume(returning: ok)
                }
            }
            sendingBatch.removeAll(keepingCapacity: true)
        }
        for member in pendingReplies {
            if let waiter = workers[member].sendWaiter {
                workers[member].sendWaiter = nil
                waiter.resume(returning: false)
            }
        }
        pendingReplies.removeAll(keepingCapacity: true)
        sending = false
        return !sendFailed
    }

    /// Moves a worker's spliced reply data from its pipe to the socket.
    private func sendSpliced(from worker: NBDRequestWorker) async -> Bool {
        guard let pipe = worker.pipe else { return false }
        let socketFd = socket.fd
        let executor = queue.executor
        var remaining = worker.splicedBytes
        worker.splicedBytes = 0
        while remaining > 0 {
            let count = UInt32(remaining)
            let result = await executor.perform { io_uring_prep_splice($0, pipe.read, -1, socketFd, -1, count, 0) }
            if result > 0 {
                remaining -= Int(result)
            } else if result != -EINTR && result != -EAGAIN {
                worker.closePipe()
                return false
            }
        }
        return true
    }

    /// Sends `count` iovecs from `sendIovecs`, at most IOV_MAX per call, resuming after short sends.
    private func sendAll(count: Int) async -> Bool {
        var first = 0
        while first < count {
            if sendIovecs[first].iov_len == 0 {
                first += 1
                continue
            }
            message.pointee.msg_iov = sendIovecs + first
            message.pointee.msg_iovlen = min(count - first, Self.maxIovecsPerSend)
            var sent: Int
            do { sent = try await socket.sendMessage(message) } catch { return false }
            guard sent > 0 else { return false }
            while sent > 0 {
                let length = sendIovecs[first].iov_len
                if sent >= length {
                    sent -= length
                    first += 1
                } else {
                    sendIovecs[first].iov_base += sent
                    sendIovecs[first].iov_len -= sent
                    sent = 0
                }
            }
        }
        return true
    }

    // MARK: Ending

    private func finish() async {
        phase = .closing
        server.connectionEnded(number)
        try? await socket.close()
    }
}
