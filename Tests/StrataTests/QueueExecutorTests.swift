import CStrataShim
import Glibc
import StrataRuntime
import Testing

private actor RingUser {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let executor: QueueExecutor
    var completions = 0

    init(executor: QueueExecutor) {
        self.executor = executor
        self.unownedExecutor = executor.asUnownedSerialExecutor()
    }

    func nops(_ count: Int) async -> Bool {
        var allOnThread = true
        for _ in 0..<count {
            let result = await executor.perform { io_uring_prep_nop($0) }
            if result != 0 || !executor.isCurrent { allOnThread = false }
            completions += 1
        }
        return allOnThread
    }
}

@Suite struct QueueExecutorTests {
    @Test func nopCompletionsResumeOnTheRingThreadWithoutCrossingThreads() async throws {
        let executor = try QueueExecutor(name: "test-q0")
        let user = RingUser(executor: executor)
        _ = await user.nops(10)
        let before = executor.crossThreadEnqueues
        // The test runner owns main, so the thread-affine default executor is not installed here:
        // the task's executor preference keeps resumed continuations on the ring thread instead.
        let allOnThread = await Task(executorPreference: executor) { await user.nops(10_000) }.value
        let crossings = executor.crossThreadEnqueues - before
        #expect(allOnThread)
        print("cross-thread enqueues for 10000 NOPs: \(crossings)")
        #expect(crossings <= 2)
        await executor.shutdown()
    }
}
