
/// A clock that moves only when a test advances it. Sleepers wake in deadline order (ties in
/// the order they slept), so timing logic is tested without real time.
public final class VirtualClock: IOClock, Sendable {
    private struct Sleeper {
        let deadlineNs: UInt64
        let sequence: UInt64
        let continuation: CheckedContinuation<Void, Never>
    }

    private struct State {
        var nowNs: UInt64
        var sequence: UInt64 = 0
        var sleepers: [Sleeper] = []
    }

    private let state: Locked<State>

    public init(startNs: UInt64 = 0) { state = Locked(State(nowNs: startNs)) }

    public var nowNs: UInt64 { state.withLock { $0.nowNs } }

    /// How many tasks are sleeping on this clock.
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    /// The earliest deadline anyone sleeps until, if any.
    public var nextDeadlineNs: UInt64? { state.withLock { $0.sleepers.map(\.deadlineNs).min() } }

    public func sleep(untilNs deadlineNs: UInt64) async {
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state -> Bool in
                if deadlineNs <= state.nowNs { return true }
                state.sequence += 1
                state.sleepers.append(Sleeper(deadlineNs: deadlineNs, sequence: state.sequence, continuation: continuation))
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    /// Moves time to `targetNs`, waking every sleeper whose deadline has come, earliest first.
    public func advance(toNs targetNs: UInt64) {
        let due = state.withLock { state -> [Sleeper] in
            precondition(targetNs >= state.nowNs, "virtual time never goes backwards")
            state.nowNs = targetNs
            let due = state.sleepers.filter { $0.deadlineNs <= targetNs }
                .sorted { ($0.deadlineNs, $0.sequence) < ($1.deadlineNs, $1.sequence) }
            state.sleepers.removeAll { $0.deadlineNs <= targetNs }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    public func advance(byNs deltaNs: UInt64) { advance(toNs: nowNs + deltaNs) }
}
