import CRbd
import Glibc
import StrataGraph
import StrataRuntime

/// An rbd node on one queue: each request is one librbd asynchronous call. Its completion
/// callback runs on a librbd thread and hands the request's continuation to this queue's executor
/// (`QueueExecutor.resume`: a remote hand-over that wakes the executor through its eventfd, on its
/// ring), which resumes it on its own thread: no queue thread ever waits for librbd, and no
/// request passes through another thread on its way back.
actor RbdNodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let state: RbdNodeState

    init(state: RbdNodeState, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.state = state
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        if let answer = request.leafPrologue(sizeBytes: state.sizeBytes, readOnly: state.readOnly) { return answer }
        let image = state.connection.image
        let offset = request.offsetBytes
        let length = request.lengthBytes
        let base = request.buffer.base
        let result: Int
        switch request.operation {
        case .read:
            guard let base else { return .invalid }
            result = await Self.perform { rbd_aio_read(image, offset, length, base.assumingMemoryBound(to: CChar.self), $0) }
        case .write:
            guard let base else { return .invalid }
            result = await Self.perform { rbd_aio_write(image, offset, length, base.assumingMemoryBound(to: CChar.self), $0) }
        case .flush:
            result = await Self.perform { rbd_aio_flush(image, $0) }
        case .discard:
            result = await Self.perform { rbd_aio_discard(image, offset, UInt64(length), $0) }
        case .writeZeroes:
            result = await Self.perform { rbd_aio_write_zeroes(image, offset, length, $0, 0, 0) }
        case .spliceRead:
            return .notSupported
        }
        if result < 0 { return IOStatus(errno: Int32(clamping: -result)) }
        if request.operation == .read && result < length {
            // Past the image's end (it shrank under us): what librbd did not fill reads as zeros.
            base!.advanced(by: result).initializeMemory(as: UInt8.self, repeating: 0, count: length - result)
        }
        return .ok
    }

    /// Starts one librbd call with a fresh completion and waits for its callback; returns what
    /// librbd returned (bytes for a read, 0 or a negative errno).
    private static nonisolated(nonsending) func perform(_ start: (rbd_completion_t) -> Int32) async -> Int {
        guard let executor = QueueExecutor.current else { preconditionFailure("an rbd request runs on a queue executor") }
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<Int, Never>) in
            let waiter = Unmanaged.passRetained(RbdWaiter(continuation, executor: executor)).toOpaque()
            var completion: rbd_completion_t?
            let created = rbd_aio_create_completion(waiter, rbdCompletionCallback, &completion)
            guard created >= 0, let completion else {
                Unmanaged<RbdWaiter>.fromOpaque(waiter).release()
                continuation.resume(returning: Int(created < 0 ? created : -ENOMEM))
                return
            }
            let started = start(completion)
            if started < 0 {
                // The call was refused before it was queued: the callback never comes.
                rbd_aio_release(completion)
                Unmanaged<RbdWaiter>.fromOpaque(waiter).release()
                continuation.resume(returning: Int(started))
            }
        }
    }
}

/// The continuation a librbd completion resumes, and the queue executor it resumes on; retained
/// across the call, released by the callback.
private final class RbdWaiter {
    let continuation: UnsafeContinuation<Int, Never>
    let executor: QueueExecutor

    init(_ continuation: UnsafeContinuation<Int, Never>, executor: QueueExecutor) {
        self.continuation = continuation
        self.executor = executor
    }
}

/// librbd's completion callback, on one of librbd's threads.
private func rbdCompletionCallback(_ completion: rbd_completion_t?, _ argument: UnsafeMutableRawPointer?) {
    guard let completion, let argument else { preconditionFailure("librbd called back without its completion or argument") }
    let value = rbd_aio_get_return_value(completion)
    rbd_aio_release(completion)
    let waiter = Unmanaged<RbdWaiter>.fromOpaque(argument).takeRetainedValue()
    waiter.executor.resume(waiter.continuation, returning: Int(value))
}
