import Dispatch
import Glibc
import StrataRuntime
import Testing

/// What foreign event loops (libiscsi's socket, librbd's callback threads) rely on in the runtime:
/// a poll on the ring that gives up after its linked timeout, and continuations that another
/// thread hands back to be resumed on the queue's own thread.
@Suite struct RingPollTests {
    @Test func aPollSeesDataAndGivesUpAtItsTimeout() async throws {
        let executor = try QueueExecutor(name: "poll-q0")
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])
        let timeout = RingPoll.Timeout(nanoseconds: 50_000_000)
        let (quiet, elapsedNs): (Int32, UInt64) = await Task(executorPreference: executor) {
            let start = MonotonicClock.now()
            let fired = await RingPoll.wait(fd: readEnd, events: Int16(POLLIN), timeout: timeout)
            return (fired, MonotonicClock.now() - start)
        }.value
        #expect(quiet == 0, "nothing to read: the linked timeout ends the poll")
        #expect(elapsedNs >= 40_000_000, "the poll waited for its timeout (\(elapsedNs) ns)")
        var byte: UInt8 = 1
        #expect(write(writeEnd, &byte, 1) == 1)
        let ready = await Task(executorPreference: executor) {
            await RingPoll.wait(fd: readEnd, events: Int16(POLLIN), timeout: timeout)
        }.value
        #expect(ready & Int32(POLLIN) != 0)
        close(readEnd)
        close(writeEnd)
        await executor.shutdown()
    }

    @Test func continuationsHandedBackFromAnotherThreadResumeOnTheQueueThread() async throws {
        let executor = try QueueExecutor(name: "foreign-q0")
        let results: [Bool] = await Task(executorPreference: executor) {
            var onQueue: [Bool] = []
            for round in 0..<100 {
                let value = await withUnsafeContinuation { (continuation: UnsafeContinuation<Int, Never>) in
                    // As librbd's callback thread does: a thread the runtime does not know.
                    DispatchQueue.global().async { executor.resume(continuation, returning: round * 2) }
                }
                onQueue.append(value == round * 2 && QueueExecutor.current === executor)
            }
            return onQueue
        }.value
        #expect(results.count == 100 && results.allSatisfy { $0 })
        #expect(executor.crossThreadEnqueues >= 100, "each hand-back is counted as a cross-thread enqueue")
        await executor.shutdown()
    }
}
