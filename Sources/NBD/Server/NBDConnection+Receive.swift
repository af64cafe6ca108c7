import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

// Receiving: workers take turns reading one request header (and payload) each.
extension NBDConnection {
    func startWorker() {
        let index = workers.count
        workers.append(NBDRequestWorker())
        liveWorkers += 1
        ThreadAffineExecutors.startTask(serving: queue.executor) { await self.runWorker(index) }
    }

    func runWorker(_ index: Int) async {
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

    func takeReceiveTurn() async -> Bool {
        guard phase == .transmission else { return false }
        if !receiving {
            receiving = true
            return true
        }
        return await park { waiter in
            if phase != .transmission {
                waiter.resume(returning: false)
            } else if !receiving {
                receiving = true
                waiter.resume(returning: true)
            } else {
                receiveWaiters.append(waiter)
            }
        }
    }

    func passReceiveTurn() {
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
    func close() {
        guard phase != .closing else { return }
        phase = .closing
        let waiters = receiveWaiters
        receiveWaiters.removeAll()
        for waiter in waiters { waiter.resume(returning: false) }
    }

    /// Parses the next request, reading the socket as needed; a WRITE's payload lands in the
    /// worker's data area (or is drained when the request is refused). Nil ends the connection:
    /// EOF, a socket error, NBD_CMD_DISC or a protocol violation.
    func receiveRequest(into worker: NBDRequestWorker) async -> (NBDRequest, NBDRequestVerdict)? {
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
    func receivePayload(into destination: UnsafeMutableRawPointer, count: Int) async -> Bool {
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
    func drain(_ count: Int) async -> Bool {
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
}
