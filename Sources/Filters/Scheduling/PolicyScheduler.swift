import StrataRuntime

/// Runs one scheduling policy for every queue of a policy node: requests from all queues (all
/// parents) meet here, at most `maxInFlight` are on the device below at once, and the policy picks
/// which goes next whenever there is room. A policy that holds requests back (a limit, a rate)
/// names the time it next may let one go; one timer, on the clock of the queue that armed it, looks
/// again then.
///
/// Everything is decided under `state`'s lock. A waiter's slot holds its continuation; a request
/// the policy releases before its task has parked is marked released, and the task then returns
/// without suspending. Continuations are resumed under the lock: resuming only queues the task on
/// its executor (QueueExecutor.enqueue), which takes no lock of ours, and this keeps the hot path
/// free of a list of waiters to hand out afterwards.
///
/// Not generic over the policy: a generic class reached through the graph's existentials runs
/// unspecialized, and looked up generic metadata on every request (perf: 17% of the CPU on the
/// null path). The policy is an existential instead: one indirect call per policy call.
final class PolicyScheduler: Sendable {
    let maxInFlight: Int
    private let state: Locked<SchedulerState>

    init(policy: any SchedulingPolicy, maxInFlight: Int, nowNs: UInt64) {
        precondition(maxInFlight > 0, "a scheduler must let at least one request through")
        self.maxInFlight = maxInFlight
        self.state = Locked(SchedulerState(policy: policy, maxInFlight: maxInFlight))
    }

    var inFlight: Int { state.withLock { $0.inFlight } }
    var queued: Int { state.withLock { $0.queued } }
    var dispatched: UInt64 { state.withLock { $0.dispatched } }

    /// Returns once the policy dispatched the request: the caller sends it to the device, then
    /// calls `finished` with the returned request.
    nonisolated(nonsending) func admit(tenant: Int, isWrite: Bool, bytes: Int, offsetBytes: UInt64,
                                       clock: any IOClock) async -> PolicyRequest {
        let nowNs = clock.nowNs
        let (request, released, timer) = state.withLock { state in
            let ticket = state.takeSlot()
            let request = PolicyRequest(tenant: tenant, isWrite: isWrite, bytes: bytes, offsetBytes: offsetBytes,
                                        arrivalNs: nowNs, ticket: ticket)
            state.policy.enqueue(request, nowNs: nowNs)
            state.queued += 1
            let timer = state.pump(nowNs: nowNs)
            return (request, state.claimIfReleased(ticket), timer)
        }
        if let timer { startTimer(timer, clock: clock) }
        if released { return request }
        await park { (continuation: ParkedContinuation<Void>) in
            let now = state.withLock { $0.park(ticket: request.ticket, continuation: continuation) }
            if now { continuation.resume() }
        }
        return request
    }

    /// A dispatched request completed: its place on the device goes to whoever the policy picks.
    func finished(_ request: PolicyRequest, clock: any IOClock) {
        let nowNs = clock.nowNs
        let timer = state.withLock { state in
            precondition(state.inFlight > 0, "a request finished that was never dispatched")
            state.inFlight -= 1
            state.policy.completed(request, nowNs: nowNs)
            return state.pump(nowNs: nowNs)
        }
        if let timer { startTimer(timer, clock: clock) }
    }

    /// The one live timer: sleeps until the policy may let a request go, then asks it again.
    private func startTimer(_ timer: SchedulerTimerArm, clock: any IOClock) {
        // On the arming queue's executor, so a monotonic sleep is an io_uring timeout on its ring.
        Task(executorPreference: QueueExecutor.current) {
            var arm = timer
            while true {
                await clock.sleep(untilNs: arm.deadlineNs)
                guard let next = self.state.withLock({ $0.fire(generation: arm.generation, nowNs: clock.nowNs) }) else { return }
                arm = next
            }
        }
    }
}

struct SchedulerTimerArm: Sendable {
    let deadlineNs: UInt64
    let generation: UInt64
}

/// A waiter's slot: free, queued (its task has not parked yet), parked, or released before parking.
private enum Slot {
    case free
    case queued
    case parked(ParkedContinuation<Void>)
    case released
}

/// Everything the scheduler decides; touched only under its lock.
private struct SchedulerState: Sendable {
    var policy: any SchedulingPolicy
    let maxInFlight: Int
    var inFlight = 0
    var queued = 0
    var dispatched: UInt64 = 0
    var slots: [Slot] = []
    var freeSlots: [Int] = []
    var timerArmed = false
    var timerDeadlineNs: UInt64 = 0
    var timerGeneration: UInt64 = 0

    init(policy: any SchedulingPolicy, maxInFlight: Int) {
        self.policy = policy
        self.maxInFlight = maxInFlight
        // Slots grow with the most waiters ever seen and are reused, so steady state allocates nothing.
        slots.reserveCapacity(256)
        freeSlots.reserveCapacity(256)
    }

    mutating func takeSlot() -> Int {
        if let slot = freeSlots.popLast() {
            slots[slot] = .queued
            return slot
        }
        slots.append(.queued)
        return slots.count - 1
    }

    /// True when the request went already: its slot is freed and its task need not park.
    mutating func claimIfReleased(_ ticket: Int) -> Bool {
        guard case .released = slots[ticket] else { return false }
        free(ticket)
        return true
    }

    /// The task parks: true when it was released meanwhile and must resume at once.
    mutating func park(ticket: Int, continuation: ParkedContinuation<Void>) -> Bool {
        switch slots[ticket] {
        case .released:
            free(ticket)
            return true
        case .queued:
            slots[ticket] = .parked(continuation)
            return false
        case .free, .parked:
            preconditionFailure("ticket \(ticket) parked twice or after it was freed")
        }
    }

    private mutating func free(_ ticket: Int) {
        slots[ticket] = .free
        freeSlots.append(ticket)
    }

    /// Fills the device's free places with what the policy picks; returns a timer to start when the
    /// policy holds requests back and no timer will look early enough.
    mutating func pump(nowNs: UInt64) -> SchedulerTimerArm? {
        while inFlight < maxInFlight {
            switch policy.next(nowNs: nowNs) {
            case .dispatch(let request):
                inFlight += 1
                queued -= 1
                dispatched &+= 1
                release(request.ticket)
            case .wait(let untilNs):
                precondition(untilNs > nowNs, "\(type(of: policy).driverName): waits until \(untilNs), which is not after \(nowNs)")
                if timerArmed && timerDeadlineNs <= untilNs { return nil }
                timerArmed = true
                timerDeadlineNs = untilNs
                timerGeneration &+= 1
                return SchedulerTimerArm(deadlineNs: untilNs, generation: timerGeneration)
            case .idle:
                precondition(queued == 0, "\(type(of: policy).driverName): idle with \(queued) requests queued")
                return nil
            }
        }
        return nil
    }

    private mutating func release(_ ticket: Int) {
        switch slots[ticket] {
        case .queued:
            slots[ticket] = .released
        case .parked(let continuation):
            free(ticket)
            continuation.resume()
        case .free, .released:
            preconditionFailure("ticket \(ticket) dispatched twice")
        }
    }

    /// The timer woke: nil ends it (superseded, or nothing left to wait for), else the arm it
    /// carries on with (the task sleeps again rather than starting another).
    mutating func fire(generation: UInt64, nowNs: UInt64) -> SchedulerTimerArm? {
        guard timerArmed, generation == timerGeneration else { return nil }
        timerArmed = false
        return pump(nowNs: nowNs)
    }
}
