import DequeModule
import StrataRuntime
import Synchronization

/// QEMU's throttle group (block/throttle-groups.c): one set of limits shared by every member node
/// and every queue. Requests wait in FIFO order per member and direction; when the budget allows,
/// members are served round-robin, so a busy member cannot starve a quiet one.
///
/// Waking: every decision happens under `state`'s lock, which keeps one invariant at each unlock:
/// a direction with queued requests has exactly one live timer (`TimerState.armed`). The request
/// that queues first arms it by starting a timer task; the task sleeps on the clock, then, under
/// the lock, lets through whatever the budget allows and either sleeps again for the next deadline
/// or, with the queue empty, disarms and ends. So no waiter can be queued without a timer that
/// will reach it, and a waiter is resumed only after being popped from its queue under the lock,
/// hence exactly once. `setLimits` (and `unregister`) also free waiters; when they make an armed
/// timer useless or too late, they bump its generation, and the stale task ends on waking without
/// touching anything.
///
/// Order: a released waiter still counts as pending until its task runs and checks in (QEMU's
/// `pending_reqs`). Until then a newcomer of the same member and direction queues behind it, and
/// the lock-free path stays off even when the limits are gone, so nobody overtakes a request
/// between its release and its resumption.
public final class ThrottleGroup: Sendable {
    /// A member's handle, from `register()`.
    public struct Member: Hashable, Sendable {
        fileprivate let id: UInt64
    }

    public struct Statistics: Sendable, Equatable {
        /// Requests let through, throttled or not.
        public var admitted: UInt64 = 0
        /// Requests that had to queue.
        public var throttled: UInt64 = 0
        /// Time spent queued, summed over all requests.
        public var totalWaitNs: UInt64 = 0

        public init() {}

        /// Counters wrap rather than trap: statistics must never stop I/O.
        mutating func count(waitedNs: UInt64?) {
            admitted &+= 1
            guard let waitedNs else { return }
            throttled &+= 1
            totalWaitNs &+= waitedNs
        }
    }

    public let name: String
    /// For timers that `setLimits` arms: it has no request of its own to take a clock from.
    private let clock: any IOClock
    /// Mirrors `limits.isEnabled`, read without the lock on every request.
    private let enabled: Atomic<Bool>
    private let state: Locked<GroupState>

    public init(name: String, limits: ThrottleLimits = .unlimited, clock: any IOClock) {
        self.name = name
        self.clock = clock
        self.enabled = Atomic(limits.isEnabled)
        self.state = Locked(GroupState(throttle: ThrottleState(limits: limits, nowNs: clock.nowNs)))
    }

    public var limits: ThrottleLimits { state.withLock { $0.throttle.limits } }
    public var isEnabled: Bool { enabled.load(ordering: .relaxed) }
    public var statistics: Statistics { state.withLock { $0.statistics } }
    public var memberCount: Int { state.withLock { $0.members.count } }
    /// Requests queued now, both directions.
    public var queuedRequests: Int { state.withLock { $0.waiting.reduce(0, +) } }

    /// When a timer next looks at the queues: the earliest armed deadline, nil when nothing waits.
    /// Timers superseded by `setLimits` may still sleep on the clock; they are not counted here.
    public var nextReleaseNs: UInt64? {
        state.withLock { state in state.timers.filter(\.armed).map(\.deadlineNs).min() }
    }

    public func statistics(for member: Member) -> Statistics? {
        state.withLock { state in state.index(of: member.id).map { state.members[$0].statistics } }
    }

    /// Adds a member at the end of the round-robin order. Nil once the group is retired (its last
    /// member left): the caller must look the group up again.
    public func register() -> Member? {
        state.withLock { state in
            guard !state.retired else { return nil }
            state.nextMemberID += 1
            state.members.append(MemberState(id: state.nextMemberID))
            return Member(id: state.nextMemberID)
        }
    }

    /// Removes a member. A member leaves once no queue can reach its node, so nothing should be
    /// queued; anything that is goes through rather than being stranded. Returns true when this was
    /// the last member: the group is then retired and its owner should forget it.
    @discardableResult
    public func unregister(_ member: Member) -> Bool {
        let (released, retired) = state.withLock { $0.remove(member: member.id, nowNs: clock.nowNs) }
        Self.resume(released)
        return retired
    }

    /// Returns when the request may go. Never fails and never reorders a member's requests of one
    /// direction. `clock` is the caller's queue clock: a timer armed here sleeps on it.
    public nonisolated(nonsending) func admit(member: Member, isWrite: Bool, bytes: Int, clock: any IOClock) async {
        // The default graph's hot path: a group without limits costs one relaxed load and no lock.
        // A request racing with `setLimits` may see the old value; either outcome is correct.
        guard enabled.load(ordering: .relaxed) else { return }
        assert(bytes >= 0, "a throttled request's size is a byte count")
        let direction = isWrite ? 1 : 0
        let size = UInt64(Swift.max(bytes, 0))
        if state.withLock({ $0.admitIfFree(member: member.id, direction: direction, bytes: size, nowNs: clock.nowNs) }) {
            return
        }
        // A queued waiter is resumed exactly once, by whoever pops it from its queue under the
        // lock. It returns whether the request was queued.
        let wasQueued = await park { (continuation: ParkedContinuation<Bool>) in
            // Decided again under the lock: the budget or the queues may have changed since.
            let arrival = state.withLock {
                $0.arrive(member: member.id, direction: direction, bytes: size, continuation: continuation, nowNs: clock.nowNs)
            }
            switch arrival {
            case .admitted: continuation.resume(returning: false)
            case .queued: break
            case .queuedArming(let deadlineNs, let generation):
                startTimer(direction: direction, deadlineNs: deadlineNs, generation: generation, clock: clock)
            }
        }
        guard wasQueued else { return }
        state.withLock { state in
            // The last released request to run turns the lock-free path back on if limits are gone.
            if state.checkIn(member: member.id, direction: direction), !state.throttle.limits.isEnabled {
                enabled.store(false, ordering: .relaxed)
            }
        }
    }

    /// Changes the limits of a running group (QEMU's block_set_io_throttle). The buckets restart
    /// empty, as in QEMU; queued requests stay in order and are re-evaluated against the new
    /// limits at once, and a timer set for a later deadline than they now need is replaced.
    public func setLimits(_ newLimits: ThrottleLimits) {
        let outcome = state.withLock { state in
            let outcome = state.reconfigure(newLimits, nowNs: clock.nowNs)
            // Without limits the lock is skipped only once every released request has run (see
            // `checkIn`): a request that skips it then finds nothing ahead of it.
            enabled.store(newLimits.isEnabled || state.resumingTotal > 0, ordering: .relaxed)
            return outcome
        }
        Self.resume(outcome.released)
        for arm in outcome.timers {
            startTimer(direction: arm.direction, deadlineNs: arm.deadlineNs, generation: arm.generation, clock: clock)
        }
    }

    /// The one live timer of a direction: sleeps, serves, and repeats while requests wait.
    private func startTimer(direction: Int, deadlineNs: UInt64, generation: UInt64, clock: any IOClock) {
        // On the arming queue's executor when there is one, so a monotonic sleep is an io_uring
        // timeout on its ring rather than a thread of the global pool.
        Task(executorPreference: QueueExecutor.current) {
            var deadline = deadlineNs
            while true {
                await clock.sleep(untilNs: deadline)
                let release = self.state.withLock { $0.fire(direction: direction, generation: generation, nowNs: clock.nowNs) }
                Self.resume(release.waiters)
                guard let next = release.nextDeadlineNs else { return }
                deadline = next
            }
        }
    }

    /// Outside the lock: a resumed request may run on this thread before the call returns.
    private static func resume(_ waiters: [Waiter]) {
        for waiter in waiters { waiter.continuation.resume(returning: true) }
    }
}

private struct Waiter: Sendable {
    let continuation: ParkedContinuation<Bool>
    let bytes: UInt64
    let arrivalNs: UInt64
}

private struct MemberState: Sendable {
    let id: UInt64
    /// Indexed by direction: 0 read, 1 write.
    var queues = [Deque<Waiter>(), Deque<Waiter>()]
    /// Per direction, requests released but not yet running: they still hold their place.
    var resuming = [0, 0]
    var statistics = ThrottleGroup.Statistics()
}

/// A direction's timer. `generation` names the live timer task; a task holding an older one was
/// superseded and must do nothing.
private struct TimerState: Sendable {
    var armed = false
    var generation: UInt64 = 0
    var deadlineNs: UInt64 = 0
}

/// Waiters let through (to resume outside the lock) and when the timer must look again.
private struct Release: Sendable {
    var waiters: [Waiter] = []
    var nextDeadlineNs: UInt64?
}

private enum Arrival: Sendable {
    case admitted
    case queued
    case queuedArming(deadlineNs: UInt64, generation: UInt64)
}

private struct TimerArm: Sendable {
    let direction: Int
    let deadlineNs: UInt64
    let generation: UInt64
}

/// Everything the group decides, only ever touched under its lock.
private struct GroupState: Sendable {
    var throttle: ThrottleState
    /// In round-robin order.
    var members: [MemberState] = []
    var nextMemberID: UInt64 = 0
    var retired = false
    /// Queued requests per direction, all members together.
    var waiting = [0, 0]
    /// Per direction, the member served last; the next turn goes to the one after it.
    var token: [UInt64?] = [nil, nil]
    var timers = [TimerState(), TimerState()]
    /// Released requests not yet running, all members (including ones that left) together.
    var resumingTotal = 0
    var statistics = ThrottleGroup.Statistics()

    func index(of id: UInt64) -> Int? { members.firstIndex { $0.id == id } }

    /// Admits at once when nothing of this direction is queued or timed and the budget allows.
    mutating func admitIfFree(member id: UInt64, direction: Int, bytes: UInt64, nowNs: UInt64) -> Bool {
        guard let index = index(of: id) else {
            // Not a member (any more): it has no queue to keep in order, so it goes through, counted.
            charge(member: nil, direction: direction, bytes: bytes, waitedNs: nil)
            return true
        }
        guard waiting[direction] == 0, !timers[direction].armed, members[index].resuming[direction] == 0,
              throttle.waitNs(isWrite: direction == 1, nowNs: nowNs) == 0 else { return false }
        charge(member: index, direction: direction, bytes: bytes, waitedNs: nil)
        return true
    }

    mutating func arrive(member id: UInt64, direction: Int, bytes: UInt64,
                         continuation: ParkedContinuation<Bool>, nowNs: UInt64) -> Arrival {
        if admitIfFree(member: id, direction: direction, bytes: bytes, nowNs: nowNs) { return .admitted }
        guard let index = index(of: id) else { preconditionFailure("admitIfFree lets non-members through") }
        members[index].queues[direction].append(Waiter(continuation: continuation, bytes: bytes, arrivalNs: nowNs))
        waiting[direction] += 1
        guard !timers[direction].armed else { return .queued }
        // The first to queue arms the timer, for when the budget next lets a request through.
        let deadlineNs = nowNs + throttle.waitNs(isWrite: direction == 1, nowNs: nowNs)
        timers[direction].generation &+= 1
        timers[direction].armed = true
        timers[direction].deadlineNs = deadlineNs
        return .queuedArming(deadlineNs: deadlineNs, generation: timers[direction].generation)
    }

    /// A timer woke: serve what the budget allows, and say whether it must sleep again.
    mutating func fire(direction: Int, generation: UInt64, nowNs: UInt64) -> Release {
        guard timers[direction].armed, timers[direction].generation == generation else { return Release() }
        let release = releaseReady(direction: direction, nowNs: nowNs)
        if let next = release.nextDeadlineNs {
            timers[direction].deadlineNs = next
        } else {
            timers[direction].armed = false
        }
        return release
    }

    /// Lets queued requests go while the budget allows, one member's turn at a time.
    mutating func releaseReady(direction: Int, nowNs: UInt64) -> Release {
        var release = Release()
        while waiting[direction] > 0 {
            let waitNs = throttle.waitNs(isWrite: direction == 1, nowNs: nowNs)
            if waitNs > 0 {
                release.nextDeadlineNs = nowNs + waitNs
                break
            }
            let index = nextMember(direction: direction)
            guard let waiter = members[index].queues[direction].popFirst() else { preconditionFailure("chosen member has no waiter") }
            waiting[direction] -= 1
            members[index].resuming[direction] += 1
            resumingTotal += 1
            token[direction] = members[index].id
            let waitedNs = nowNs >= waiter.arrivalNs ? nowNs - waiter.arrivalNs : 0
            charge(member: index, direction: direction, bytes: waiter.bytes, waitedNs: waitedNs)
            release.waiters.append(waiter)
        }
        return release
    }

    /// The first member after the token holder with a request of this direction queued.
    func nextMember(direction: Int) -> Int {
        let start = token[direction].flatMap { index(of: $0) }.map { $0 + 1 } ?? 0
        for step in 0..<members.count {
            let candidate = (start + step) % members.count
            if !members[candidate].queues[direction].isEmpty { return candidate }
        }
        preconditionFailure("waiting count says a request is queued but no member has one")
    }

    mutating func charge(member index: Int?, direction: Int, bytes: UInt64, waitedNs: UInt64?) {
        throttle.account(isWrite: direction == 1, bytes: bytes)
        statistics.count(waitedNs: waitedNs)
        if let index { members[index].statistics.count(waitedNs: waitedNs) }
    }

    mutating func reconfigure(_ limits: ThrottleLimits, nowNs: UInt64) -> (released: [Waiter], timers: [TimerArm]) {
        throttle.configure(limits, nowNs: nowNs)
        var released: [Waiter] = []
        var arms: [TimerArm] = []
        for direction in 0..<2 {
            let release = releaseReady(direction: direction, nowNs: nowNs)
            released += release.waiters
            if let next = release.nextDeadlineNs {
                // A timer set under the old limits may sleep past what the queue now needs.
                if !timers[direction].armed || timers[direction].deadlineNs > next {
                    timers[direction].generation &+= 1
                    timers[direction].armed = true
                    timers[direction].deadlineNs = next
                    arms.append(TimerArm(direction: direction, deadlineNs: next, generation: timers[direction].generation))
                }
            } else {
                disarmIfIdle(direction: direction)
            }
        }
        return (released, arms)
    }

    mutating func remove(member id: UInt64, nowNs: UInt64) -> (released: [Waiter], retired: Bool) {
        guard let index = index(of: id) else { return ([], false) }
        var released: [Waiter] = []
        for direction in 0..<2 {
            let queued = members[index].queues[direction]
            members[index].queues[direction].removeAll()
            for waiter in queued {
                waiting[direction] -= 1
                resumingTotal += 1
                charge(member: index, direction: direction, bytes: waiter.bytes, waitedNs: nowNs >= waiter.arrivalNs ? nowNs - waiter.arrivalNs : 0)
                released.append(waiter)
            }
        }
        members.remove(at: index)
        for direction in 0..<2 {
            // Keep the round-robin position: the turn passes to whoever followed the leaver.
            if token[direction] == id {
                token[direction] = members.isEmpty ? nil : members[(index - 1 + members.count) % members.count].id
            }
            disarmIfIdle(direction: direction)
        }
        if members.isEmpty { retired = true }
        return (released, retired)
    }

    /// A released request is running: it no longer holds its member's place. Returns true when no
    /// released request is left waiting to run.
    mutating func checkIn(member id: UInt64, direction: Int) -> Bool {
        resumingTotal -= 1
        if let index = index(of: id) { members[index].resuming[direction] -= 1 }
        return resumingTotal == 0
    }

    /// With nothing queued, an armed timer has no job: its task ends when it wakes.
    mutating func disarmIfIdle(direction: Int) {
        guard waiting[direction] == 0, timers[direction].armed else { return }
        timers[direction].armed = false
        timers[direction].generation &+= 1
    }
}
