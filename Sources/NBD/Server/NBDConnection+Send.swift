import CStrataShim
import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

// Sending: replies are combined into one sendmsg per turn; large reads are spliced.
extension NBDConnection {
    /// Queues the worker's reply; the first worker finding no send in progress sends every reply
    /// queued until none is left. False when the socket failed (the connection is ending).
    func sendReply(_ index: Int) async -> Bool {
        guard !sendFailed else { return false }
        // No reply means serving gave up on the connection (no memory even for a header).
        guard workers[index].iovecCount > 0 else { return false }
        pendingReplies.append(index)
        workers[index].replyQueued = true
        if sending {
            // Decided in the continuation's body: the sender may have finished with this reply
            // while this call was reaching it (an await can let other calls on this actor run).
            return await park { waiter in
                if workers[index].replyQueued { workers[index].sendWaiter = waiter } else { waiter.resume(returning: !sendFailed) }
            }
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
                workers[member].replyQueued = false
                if let waiter = workers[member].sendWaiter {
                    workers[member].sendWaiter = nil
                    waiter.resume(returning: ok)
                }
            }
            sendingBatch.removeAll(keepingCapacity: true)
        }
        for member in pendingReplies {
            workers[member].replyQueued = false
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
    func sendSpliced(from worker: NBDRequestWorker) async -> Bool {
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
    func sendAll(count: Int) async -> Bool {
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
}
