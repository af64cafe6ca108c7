import CStrataShim
import DequeModule
import Dispatch
import Glibc
import Synchronization

/// A pinned OS thread that is a Swift `SerialExecutor` with its own io_uring ring.
///
/// Every actor of one queue returns this executor, so awaits between them are identity checks
/// that never leave the thread. The loop: run the jobs ready at the start of the turn, submit all
/// queued SQEs in one syscall (sleeping in the kernel when idle), reap completions from shared
/// memory and resume their continuations here.
///
/// Thread ownership: `localJobs`, `ring`, `timers` and `polling` are touched only by the executor's own thread
/// (checked with `assertOnExecutor`). Other threads reach it only through `remoteJobs` (a Mutex),
/// the atomics and the eventfd.
public final class QueueExecutor: SerialExecutor, TaskExecutor, @unchecked Sendable {
    // @unchecked Sendable: see the ownership rule above; every cross-thread field is a Mutex,
    // an Atomic or immutable.

    public let name: String
    /// The CPU this executor's thread is pinned to, or nil when not pinned.
    public let cpu: Int?
    /// NUMA node of `cpu`, for buffer placement.
    public let numaNode: Int32
    /// Most SQEs queued before they go to the kernel within a loop turn. Unbounded batches (all
    /// of a turn's completions resubmitted in one io_uring_enter) cut a virtio-blk disk's
    /// throughput by a quarter here (68k vs 90k IOPS at QD32: the host serves a burst serially);
    /// batches of 2-8 kept it and cost ~8% more CPU per I/O than unbounded ones.
    public let submitBatchLimit: UInt32

    private var polling: IdlePolling
    private var localJobs = Deque<UnownedJob>(minimumCapacity: 1024)
    private let remoteJobs = Locked(Deque<UnownedJob>())
    /// Continuations other threads asked this thread to resume (`resume(_:returning:)`); counted
    /// in `remoteJobCount` with the jobs. `drainedResumptions` is swapped with it, so neither
    /// allocates once both have grown.
    private let foreignResumptions = Locked(Deque<ForeignResumption>())
    private var drainedResumptions = Deque<ForeignResumption>()
    private let remoteJobCount = Atomic<Int>(0)
    private let remoteEnqueueTotal = Atomic<Int>(0)
    private let wakePending = Atomic<Bool>(false)
    private let stopRequested = Atomic<Bool>(false)
    private var yielded = Deque<UnsafeContinuation<Void, Never>>(minimumCapacity: 64)
    /// Tasks parked in `pollWhileIdle`, with what they poll.
    private var idlePollers: [IdlePoller] = []
    /// Set when an idle spin ended by telling the pollers to arm their notifications: when the
    /// idle period began. The next idle turn sleeps at once instead of spinning a second window.
    private var pollersDeclinedAtNs: UInt64?
    @usableFromInline var turnStartStorage: UInt64 = 0
    private var ring: IORing!
    /// Whether the eventfd read is outstanding in the ring (it is, except while stopping).
    private var wakeupArmed = false
    private var timers: TimerSlots!
    private let wakeFd: Int32
    private let wakeBuffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private var thread: pthread_t?
    private let exited = DispatchSemaphore(value: 0)
    private let exitWaiters = Locked<[CheckedContinuation<Void, Never>]>([])

    /// Starts the thread and its ring; returns once the ring is ready. `pollMaxNs` is the longest
    /// an idle loop spins before it sleeps (see `IdlePolling`); 0 sleeps at once.
    public init(name: String, cpu: Int? = nil, ringEntries: UInt32 = 512, submitBatchLimit: UInt32 = 4, pollMaxNs: UInt64 = 0) throws {
        precondition(submitBatchLimit > 0)
        self.name = name
        self.polling = IdlePolling(maxNs: pollMaxNs)
        self.cpu = cpu
        self.submitBatchLimit = submitBatchLimit
        self.numaNode = cpu.map { strata_numa_node_of_cpu(Int32($0)) } ?? -1
        let fd = strata_eventfd_create()
        guard fd >= 0 else { throw SystemError("eventfd", errno: -fd) }
        self.wakeFd = fd
        let started = DispatchSemaphore(value: 0)
        let startError = Locked<Error?>(nil)
        let context = ThreadStart { [self] in
            do {
                try self.prepareOnThread(ringEntries: ringEntries)
            } catch {
                startError.withLock { $0 = error }
                started.signal()
                self.exited.signal()
                return
            }
            started.signal()
            self.runLoop()
            // The ring belongs to this thread (its registered descriptor is in this thread's table).
            self.ring = nil
            // From here on this thread is no executor: whatever the waiters resume runs elsewhere.
            strata_current_executor_set(nil)
            self.exited.signal()
            for waiter in self.exitWaiters.withLock({ $0 }) { waiter.resume() }
        }
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { raw in
            Unmanaged<ThreadStart>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(context).toOpaque())
        guard result == 0 else { throw SystemError("pthread_create", errno: result) }
        pthread_detach(handle)
        thread = handle
        started.wait()
        if let error = startError.withLock({ $0 }) { throw error }
    }

    deinit {
        close(wakeFd)
        wakeBuffer.deallocate()
    }

    // MARK: Executor

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if isCurrent {
            localJobs.append(job)
            return
        }
        remoteJobs.withLock { jobs in
            jobs.append(job)
            remoteJobCount.add(1, ordering: .sequentiallyConsistent)
        }
        remoteEnqueueTotal.add(1, ordering: .relaxed)
        wake()
    }

    /// Resumes `continuation` with `value` on this executor's thread; callable from any thread. For
    /// completions a C library reports on threads of its own (librbd): resumed there, the waiting
    /// task would go to the global executor, since the thread-affine default executor keeps only
    /// what a queue thread enqueues, and reach its queue through a Dispatch thread, one extra hop
    /// per request.
    public func resume(_ continuation: UnsafeContinuation<Int, Never>, returning value: Int) {
        foreignResumptions.withLock { pending in
            pending.append(ForeignResumption(continuation: continuation, value: value))
            remoteJobCount.add(1, ordering: .sequentiallyConsistent)
        }
        remoteEnqueueTotal.add(1, ordering: .relaxed)
        wake()
    }

    /// True when another thread has handed this executor a job that has not run yet: long-running
    /// request loops check it to let control messages in between two requests.
    @inline(__always) public var hasPendingRemoteJobs: Bool { remoteJobCount.load(ordering: .relaxed) > 0 }

    /// Jobs handed over from other threads since start: in steady state a queue's requests add none.
    public var crossThreadEnqueues: Int { remoteEnqueueTotal.load(ordering: .relaxed) }

    /// A job for the global executor enqueued from this thread: it runs here, serialised with
    /// this queue's actors (see ThreadAffineExecutorFactory).
    func enqueueGeneric(_ job: UnownedJob) {
        assertOnExecutor()
        localJobs.append(job)
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func checkIsolated() {
        precondition(isCurrent, "not on queue executor \(name)")
    }

    /// True on this executor's own thread: one thread-local read.
    @inline(__always) public var isCurrent: Bool {
        strata_current_executor_get() == Unmanaged.passUnretained(self).toOpaque()
    }

    @inline(__always) func assertOnExecutor() {
        assert(isCurrent, "queue executor \(name) touched from another thread")
    }

    /// When the current loop turn began, on the cycle clock: a timestamp for work that completes
    /// without waiting (node statistics), at one clock read per turn rather than per request.
    @inlinable @inline(__always) public var turnStartNs: UInt64 {
        assert(isCurrent, "queue executor \(name) touched from another thread")
        return turnStartStorage
    }

    /// The queue executor owning the calling thread, if any.
    public static var current: QueueExecutor? {
        guard let raw = strata_current_executor_get() else { return nil }
        return Unmanaged<QueueExecutor>.fromOpaque(raw).takeUnretainedValue()
    }

    // MARK: Ring operations (call only from code isolated to this executor)

    /// Queues one SQE prepared by `prepare` and suspends until its completion; returns the CQE result.
    /// The SQE goes to the kernel with the rest of this loop turn's batch.
    @inline(__always)
    public nonisolated(nonsending) func perform(_ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) async -> Int32 {
        assertOnExecutor()
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<Int32, Never>) in
            // The continuation is one pointer to a 16-byte aligned task: its bits ride in user-data.
            let bits = UInt64(UInt(bitPattern: unsafeBitCast(continuation, to: UnsafeRawPointer.self)))
            prepare(ring.nextSQE(userData: bits | IORing.CompletionKind.continuation.rawValue))
            if ring.pendingSubmissions >= submitBatchLimit { ring.submit(wait: false) }
        }
    }

    /// `perform` with a deadline: the SQE is linked to a timeout of `timeout` (relative; it must stay
    /// valid until this returns), which cancels it when it fires first: the result is then -ECANCELED.
    public nonisolated(nonsending) func perform(timeout: UnsafePointer<__kernel_timespec>,
                                                _ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) async -> Int32 {
        assertOnExecutor()
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<Int32, Never>) in
            let bits = UInt64(UInt(bitPattern: unsafeBitCast(continuation, to: UnsafeRawPointer.self)))
            // Both in one submission: a chain cut at a batch's end runs without its timeout.
            ring.reserve(2)
            let sqe = ring.nextSQE(userData: bits | IORing.CompletionKind.continuation.rawValue)
            prepare(sqe)
            strata_sqe_link_next(sqe)
            io_uring_prep_link_timeout(ring.nextSQE(userData: IORing.CompletionKind.ignored.rawValue),
                                       UnsafeMutablePointer(mutating: timeout), 0)
            if ring.pendingSubmissions >= submitBatchLimit { ring.submit(wait: false) }
        }
    }

    /// Lets every other ready job of this executor run before the caller continues. Unlike
    /// `Task.yield()`, which allocates a job each time, this parks the caller's own continuation
    /// and resumes it at the start of the next loop turn, after messages from other threads.
    public nonisolated(nonsending) func yield() async {
        assertOnExecutor()
        await withUnsafeContinuation { yielded.append($0) }
    }

    /// Parks the caller until `source` has work (true) or this executor stops polling (false):
    /// the idle spin ended, the adaptive window is closed, or `endIdlePoll` was called. On false
    /// the caller arms its notification, checks `source` once more and waits for the notification
    /// through the ring. False at once when this executor never spins (`pollMaxNs` 0).
    public nonisolated(nonsending) func pollWhileIdle(_ source: any IdlePollSource) async -> Bool {
        assertOnExecutor()
        guard polling.maxNs > 0 else { return false }
        return await withUnsafeContinuation { continuation in
            precondition(!idlePollers.contains { $0.source === source }, "an idle poll source polled twice at once")
            if idlePollers.capacity == 0 { idlePollers.reserveCapacity(16) }
            idlePollers.append(IdlePoller(source: source, continuation: continuation))
        }
    }

    /// Resumes the task polling `source`, if one is, with false (its owner is stopping).
    public func endIdlePoll(_ source: any IdlePollSource) {
        assertOnExecutor()
        guard let index = idlePollers.firstIndex(where: { $0.source === source }) else { return }
        idlePollers.swapAt(index, idlePollers.count - 1)
        idlePollers.removeLast().continuation.resume(returning: false)
    }

    /// Resumes, with true, every poller whose source has work; returns how many.
    private func resumeReadyPollers() -> Int {
        var resumed = 0
        var index = 0
        while index < idlePollers.count {
            if idlePollers[index].source.hasWork() {
                idlePollers.swapAt(index, idlePollers.count - 1)
                idlePollers.removeLast().continuation.resume(returning: true)
                resumed += 1
            } else {
                index += 1
            }
        }
        return resumed
    }

    /// Suspends the caller until the monotonic clock reaches `deadlineNs`, with an io_uring timeout.
    public nonisolated(nonsending) func sleep(untilNs deadlineNs: UInt64) async {
        assertOnExecutor()
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let slot = timers.take(deadlineNs: deadlineNs, continuation: continuation)
            let bits = UInt64(UInt(bitPattern: slot)) | IORing.CompletionKind.timer.rawValue
            strata_prep_timeout_abs(ring.nextSQE(userData: bits), slot.pointer(to: \.deadline)!)
        }
    }

    // MARK: Loop

    private func prepareOnThread(ringEntries: UInt32) throws {
        strata_current_executor_set(Unmanaged.passUnretained(self).toOpaque())
        _ = strata_set_thread_name(String(name.prefix(15)))
        if let cpu {
            let result = strata_pin_current_thread(Int32(cpu))
            if result != 0 { throw SystemError("pin \(name) to CPU \(cpu)", errno: -result) }
        }
        ring = try IORing(entries: ringEntries)
        timers = TimerSlots()
        armWakeup()
    }

    private func armWakeup() {
        wakeupArmed = true
        let sqe = ring.nextSQE(userData: IORing.CompletionKind.wakeup.rawValue)
        io_uring_prep_read(sqe, wakeFd, wakeBuffer, 8, 0)
    }

    /// The producer's half of a Dekker pair with the loop (see `.wakeup` in `handleCompletion`):
    /// the job count goes up, then the flag is read, both sequentially consistent, so either the
    /// loop sees the job before it sleeps or this sees the flag cleared and signals.
    private func wake() {
        if !wakePending.exchange(true, ordering: .sequentiallyConsistent) {
            _ = strata_eventfd_signal(wakeFd)
        }
    }

    private func drainRemoteJobs() {
        guard remoteJobCount.load(ordering: .acquiring) > 0 else { return }
        remoteJobs.withLock { jobs in
            localJobs.append(contentsOf: jobs)
            remoteJobCount.subtract(jobs.count, ordering: .relaxed)
            jobs.removeAll(keepingCapacity: true)
        }
        foreignResumptions.withLock { pending in
            swap(&pending, &drainedResumptions)
            remoteJobCount.subtract(drainedResumptions.count, ordering: .relaxed)
        }
        // On this thread now: each resumed task's job lands in `localJobs`.
        while let resumption = drainedResumptions.popFirst() { resumption.continuation.resume(returning: resumption.value) }
    }

    private func runLoop() {
        let unownedSelf = asUnownedSerialExecutor()
        while true {
            turnStartStorage = CycleClock.now()
            drainRemoteJobs()
            while let continuation = yielded.popFirst() { continuation.resume() }
            // Every turn, not only idle ones: a busy executor must not starve a polled queue.
            if !idlePollers.isEmpty { _ = resumeReadyPollers() }
            // Only the jobs ready now: new ones wait for the next turn so submissions keep flowing.
            var budget = localJobs.count
            while budget > 0, let job = localJobs.popFirst() {
                job.runSynchronously(on: unownedSelf)
                budget -= 1
            }
            if stopRequested.load(ordering: .acquiring) && localJobs.isEmpty && yielded.isEmpty
                && remoteJobCount.load(ordering: .acquiring) == 0 && idlePollers.isEmpty
                && ring.inFlight - (wakeupArmed ? 1 : 0) == 0 {
                return
            }
            // Sequentially consistent: this load must not move before the wakeup's flag store.
            let idle = localJobs.isEmpty && yielded.isEmpty && remoteJobCount.load(ordering: .sequentiallyConsistent) == 0
            if idle && polling.maxNs > 0 {
                waitIdle()
            } else {
                if !idle, let declinedAtNs = pollersDeclinedAtNs {
                    // Work came before the sleep the decline led to: a short idle period.
                    pollersDeclinedAtNs = nil
                    polling.adapt(idleNs: CycleClock.now() &- declinedAtNs)
                }
                ring.submit(wait: idle)
            }
            ring.reap(handleCompletion)
        }
    }

    /// An idle turn: spins on the ring and the idle pollers for the polling window, then sleeps
    /// in the kernel if nothing came, and adapts the window to how long the queue stayed idle.
    /// Pollers still parked when the spin ends are told to arm their notifications first, and the
    /// sleep waits for the next idle turn.
    private func waitIdle() {
        let idleStartNs = CycleClock.now()
        if let declinedAtNs = pollersDeclinedAtNs {
            pollersDeclinedAtNs = nil
            if idlePollers.isEmpty {
                // Every declined poller armed its notification: sleep, the idle period counted
                // from the decline.
                ring.submit(wait: true)
                polling.adapt(idleNs: CycleClock.now() &- declinedAtNs)
                return
            }
            // A poller parked again: it found work when it looked once more, so the queue was
            // idle only briefly, and the window (closed, say, after a contended yield) reopens.
            polling.adapt(idleNs: idleStartNs &- declinedAtNs)
        }
        var woken = false
        if polling.windowNs > 0 {
            ring.submit(wait: false)
            let untilNs = idleStartNs &+ polling.windowNs
            while !woken {
                woken = ring.hasCompletionsOrKernelWork || remoteJobCount.load(ordering: .relaxed) > 0
                    || (!idlePollers.isEmpty && resumeReadyPollers() > 0)
                let beforeYieldNs = CycleClock.now()
                if woken || beforeYieldNs >= untilNs { break }
                // Spinning on a CPU that another runnable thread needs (the peer that would
                // produce the completion, when both are pinned there) would starve it: yield, and
                // once a yield gave the CPU away, stop spinning and sleep.
                sched_yield()
                if CycleClock.now() &- beforeYieldNs > IdlePolling.contendedYieldNs {
                    polling.cpuWasContended()
                    break
                }
            }
        }
        if !woken && !idlePollers.isEmpty {
            pollersDeclinedAtNs = idleStartNs
            while let poller = idlePollers.popLast() { poller.continuation.resume(returning: false) }
            ring.submit(wait: false)
            return
        }
        // A job handed over meanwhile also signals the eventfd, so sleeping stays safe.
        ring.submit(wait: !woken)
        polling.adapt(idleNs: CycleClock.now() &- idleStartNs)
    }

    @inline(__always)
    private func handleCompletion(userData: UInt64, result: Int32) {
        let address = UInt(userData & ~IORing.kindMask)
        switch IORing.CompletionKind(rawValue: userData & IORing.kindMask) {
        case .continuation:
            let continuation = unsafeBitCast(UnsafeRawPointer(bitPattern: address)!, to: UnsafeContinuation<Int32, Never>.self)
            continuation.resume(returning: result)
        case .timer:
            timers.fire(UnsafeMutablePointer(bitPattern: address)!)
        case .wakeup:
            wakeupArmed = false
            // The loop's half of the Dekker pair with `wake()`: a release store here could sit in
            // the store buffer while the idle check below loads a job count from before a
            // producer's increment, and that producer, still reading the flag set, would not
            // signal: the loop would sleep with a job queued (a lost wakeup).
            wakePending.store(false, ordering: .sequentiallyConsistent)
            if !stopRequested.load(ordering: .acquiring) { armWakeup() }
        case .ignored:
            break
        case nil:
            preconditionFailure("completion with unknown kind \(userData)")
        }
    }

    /// Stops the loop once every queued job and in-flight I/O has finished, and blocks until the
    /// thread is gone. Actors bound to this executor are unusable afterwards: a job enqueued then
    /// never runs. For threads that are no executor; async code uses `shutdown() async`.
    public func shutdown() {
        precondition(QueueExecutor.current == nil, "a queue executor thread must not block: use `await shutdown()`")
        stopRequested.store(true, ordering: .releasing)
        _ = strata_eventfd_signal(wakeFd)
        exited.wait()
        exited.signal()  // later callers return at once
    }

    /// Stops the loop once every queued job and in-flight I/O has finished, and suspends until the
    /// thread is gone; safe from any task, including one running on this executor.
    public func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let alreadyExited = exitWaiters.withLock { waiters -> Bool in
                if exited.wait(timeout: .now()) == .success {
                    exited.signal()
                    return true
                }
                waiters.append(continuation)
                return false
            }
            if alreadyExited { continuation.resume() }
            stopRequested.store(true, ordering: .releasing)
            _ = strata_eventfd_signal(wakeFd)
        }
    }
}

/// The body of a new executor thread, boxed so pthread_create can carry it.
private final class ThreadStart {
    let body: () -> Void
    init(body: @escaping () -> Void) { self.body = body }
}

/// A continuation another thread handed over with its value (`QueueExecutor.resume`).
struct ForeignResumption {
    let continuation: UnsafeContinuation<Int, Never>
    let value: Int
}

/// A task parked in `QueueExecutor.pollWhileIdle`.
private struct IdlePoller {
    let source: any IdlePollSource
    let continuation: UnsafeContinuation<Bool, Never>
}
