import CStrataShim
import Foundation
import Glibc
import StrataRuntime
import Synchronization
import Testing

@testable import StrataRuntime

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
    /// Off a queue executor the monotonic clock sleeps on Dispatch's timers (the programs' global
    /// executor has no delayed jobs), and wakes no earlier than asked.
    @Test func theMonotonicClockSleepsOffAQueueExecutor() async {
        let clock = MonotonicClock()
        let deadline = clock.nowNs + 3_000_000
        await clock.sleep(untilNs: deadline)
        #expect(clock.nowNs >= deadline)
    }

    @Test(arguments: [0, 1_000_000] as [UInt64])
    func nopCompletionsResumeOnTheRingThreadWithoutCrossingThreads(pollMaxNs: UInt64) async throws {
        let executor = try QueueExecutor(name: "test-q0", pollMaxNs: pollMaxNs)
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

private actor Sleeper {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let executor: QueueExecutor
    var order: [Int] = []
    /// Raised once a sleep's timer is queued on the ring (for tests that need one in flight).
    nonisolated let timerQueued = Atomic<Bool>(false)

    init(executor: QueueExecutor) {
        self.executor = executor
        self.unownedExecutor = executor.asUnownedSerialExecutor()
    }

    func sleep(_ label: Int, untilNs deadline: UInt64) async {
        // Raised in the same job that queues the timer: the loop counts it in flight before it
        // can next look at a shutdown request.
        timerQueued.store(true, ordering: .releasing)
        await executor.sleep(untilNs: deadline)
        order.append(label)
    }

    func yieldTwice(_ label: Int) async {
        order.append(label)
        await executor.yield()
        order.append(label)
    }
}

@Suite struct QueueExecutorBehaviourTests {
    @Test(arguments: [0, 1_000_000] as [UInt64])
    func timersFireInDeadlineOrderAndNotEarly(pollMaxNs: UInt64) async throws {
        let executor = try QueueExecutor(name: "test-timer", pollMaxNs: pollMaxNs)
        let sleeper = Sleeper(executor: executor)
        let start = MonotonicClock.now()
        await Task(executorPreference: executor) {
            await withTaskGroup(of: Void.self) { group in
                for (label, delayMs) in [(3, 30), (1, 10), (2, 20)] {
                    group.addTask(executorPreference: executor) { await sleeper.sleep(label, untilNs: start + UInt64(delayMs) * 1_000_000) }
                }
            }
        }.value
        #expect(MonotonicClock.now() - start >= 30_000_000)
        #expect(await sleeper.order == [1, 2, 3])
        await executor.shutdown()
    }

    /// With and without spinning before sleeping: a job handed over while the loop spins (a
    /// millisecond window covers each of these) or sleeps runs, none is lost.
    @Test(arguments: [0, 1_000_000] as [UInt64])
    func jobsFromOtherThreadsWakeAnIdleExecutor(pollMaxNs: UInt64) async throws {
        let executor = try QueueExecutor(name: "test-wake", pollMaxNs: pollMaxNs)
        let sleeper = Sleeper(executor: executor)
        let before = executor.crossThreadEnqueues
        for label in 0..<50 {
            // From the test's own thread: each call is a remote enqueue that must wake the loop.
            await sleeper.sleep(label, untilNs: 0)
        }
        #expect(await sleeper.order == Array(0..<50))
        #expect(executor.crossThreadEnqueues - before >= 50)
        await executor.shutdown()
    }

    @Test func yieldLetsOtherReadyJobsRunFirst() async throws {
        let executor = try QueueExecutor(name: "test-yield")
        let sleeper = Sleeper(executor: executor)
        await Task(executorPreference: executor) {
            await withTaskGroup(of: Void.self) { group in
                group.addTask(executorPreference: executor) { await sleeper.yieldTwice(1) }
                group.addTask(executorPreference: executor) { await sleeper.yieldTwice(2) }
            }
        }.value
        let order = await sleeper.order
        #expect(order.count == 4)
        // Each task yields after its first step, so the other's first step comes before its second.
        #expect(order.firstIndex(of: 1)! < order.lastIndex(of: 2)! && order.firstIndex(of: 2)! < order.lastIndex(of: 1)!)
        await executor.shutdown()
    }

    @Test func shutdownWaitsForInFlightIOAndIsIdempotent() async throws {
        let executor = try QueueExecutor(name: "test-stop")
        let sleeper = Sleeper(executor: executor)
        let start = MonotonicClock.now()
        let pending = Task(executorPreference: executor) { () -> UInt64 in
            await sleeper.sleep(7, untilNs: start + 20_000_000)
            return MonotonicClock.now()
        }
        let deadline = MonotonicClock.now() + 10_000_000_000
        while !sleeper.timerQueued.load(ordering: .acquiring) && MonotonicClock.now() < deadline { usleep(100) }
        let started = sleeper.timerQueued.load(ordering: .acquiring)
        try #require(started, "the sleep never started")
        await executor.shutdown()
        // The timer was in flight when shutdown began: the loop stayed up until it fired and the
        // task it resumed had run. (Actors of a stopped executor are gone: nothing is asked of them.)
        let finishedNs = await pending.value
        #expect(finishedNs - start >= 20_000_000)
        await executor.shutdown()
    }

    @Test func cycleClockAgreesWithTheMonotonicClock() async throws {
        CycleClock.calibrate()
        let cycleStart = CycleClock.now()
        let monotonicStart = MonotonicClock.now()
        try await Task.sleep(nanoseconds: 50_000_000)
        let cycleElapsed = Double(CycleClock.now() - cycleStart)
        let monotonicElapsed = Double(MonotonicClock.now() - monotonicStart)
        #expect(abs(cycleElapsed - monotonicElapsed) / monotonicElapsed < 0.05)
    }
}

/// The idle loop's spin window follows QEMU's iothread rule: it grows from nothing while idle
/// periods are shorter than the longest window, stays while it covers them, and drops to nothing
/// after one longer than the longest window.
@Suite struct IdlePollingTests {
    @Test func theWindowAdaptsAsQEMUsDoes() {
        var polling = IdlePolling(maxNs: 32_768)
        #expect(polling.windowNs == 0)
        var windows: [UInt64] = []
        for _ in 0..<5 {
            polling.adapt(idleNs: 10_000)
            windows.append(polling.windowNs)
        }
        #expect(windows == [4_000, 8_000, 16_000, 16_000, 16_000])
        polling.adapt(idleNs: 30_000)
        #expect(polling.windowNs == 32_000)
        polling.adapt(idleNs: 32_500)
        #expect(polling.windowNs == 32_768)
        polling.adapt(idleNs: 40_000)
        #expect(polling.windowNs == 0)
    }

    @Test func aContendedCPUStopsTheSpinning() {
        var polling = IdlePolling(maxNs: 32_768)
        polling.adapt(idleNs: 10_000)
        polling.adapt(idleNs: 10_000)
        #expect(polling.windowNs == 8_000)
        polling.cpuWasContended()
        #expect(polling.windowNs == 0)
        polling.adapt(idleNs: 10_000)
        #expect(polling.windowNs == 4_000)
    }

    @Test func noLongestWindowNeverSpins() {
        var polling = IdlePolling(maxNs: 0)
        for idle in [0, 1, 4_000, 1_000_000] as [UInt64] {
            polling.adapt(idleNs: idle)
            #expect(polling.windowNs == 0)
        }
    }
}

/// An idle poll source set by another thread through memory alone: no job and no eventfd.
private final class FlagSource: IdlePollSource, Sendable {
    let flag = Atomic<Bool>(false)
    func hasWork() -> Bool { flag.load(ordering: .acquiring) }
}

/// `pollWhileIdle`, as the vhost-user export uses it to read a front end's available ring: work
/// published in memory reaches the parked task with no notification, idle or busy.
@Suite struct IdlePollerTests {
    /// Another thread sets the flag; the poller, declined while no window is open and asking
    /// again after a short sleep as a device arms its notification and waits, finds it, and
    /// nothing was handed to the executor from outside.
    @Test func anIdleExecutorFindsWorkPublishedInMemoryAlone() async throws {
        let executor = try QueueExecutor(name: "test-poll", pollMaxNs: 1_000_000)
        let source = FlagSource()
        let (found, declined, crossings) = await Task(executorPreference: executor) { () -> (Bool, Int, Int) in
            let before = executor.crossThreadEnqueues
            let setter = Thread { usleep(2_000); source.flag.store(true, ordering: .releasing) }
            setter.start()
            var declined = 0
            // Ten seconds at most: a poller that never reports work fails here, not by hanging.
            while declined < 500_000 {
                if await executor.pollWhileIdle(source) { return (true, declined, executor.crossThreadEnqueues - before) }
                declined += 1
                await executor.sleep(untilNs: MonotonicClock.now() + 20_000)
            }
            return (false, declined, executor.crossThreadEnqueues - before)
        }.value
        print("polls declined before the flag was found: \(declined)")
        #expect(found)
        #expect(crossings == 0)
        await executor.shutdown()
    }

    /// A task that keeps the executor busy never lets it go idle; the poller is still checked
    /// every turn and resumes once the flag is set.
    @Test func aBusyExecutorStillChecksItsPollers() async throws {
        let executor = try QueueExecutor(name: "test-poll-busy", pollMaxNs: 1_000_000)
        let source = FlagSource()
        let stop = FlagSource()
        let busy = Task(executorPreference: executor) {
            var turns = 0
            while !stop.hasWork() {
                await executor.yield()
                turns += 1
            }
            return turns
        }
        let found = await Task(executorPreference: executor) { () -> Bool in
            let setter = Thread { usleep(2_000); source.flag.store(true, ordering: .releasing) }
            setter.start()
            // Busy: the executor never goes idle, so it never declines this poller.
            return await executor.pollWhileIdle(source)
        }.value
        stop.flag.store(true, ordering: .releasing)
        let turns = await busy.value
        #expect(found)
        #expect(turns > 0)
        await executor.shutdown()
    }

    @Test func anExecutorThatNeverSpinsDeclinesAtOnce() async throws {
        let executor = try QueueExecutor(name: "test-poll-off", pollMaxNs: 0)
        let source = FlagSource()
        source.flag.store(true, ordering: .releasing)
        let found = await Task(executorPreference: executor) { await executor.pollWhileIdle(source) }.value
        #expect(!found)
        await executor.shutdown()
    }
}
