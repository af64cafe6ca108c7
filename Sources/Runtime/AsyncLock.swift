import DequeModule

/// Mutual exclusion for async code that must hold it across awaits (a qcow2 cluster allocation
/// writes metadata while holding it). Waiters suspend, never block their thread, so a queue
/// executor keeps serving other requests while one of its tasks waits. Unlocking hands the lock
/// to the oldest waiter, so no waiter starves.
public final class AsyncLock: Sendable {
    private struct State {
        var held = false
        /// The holding task (its identity as a hash), nil between a hand-over and the waiter running.
        var owner: Int?
        var waiters: Deque<ParkedContinuation<Void>> = []
    }

    private let state = Locked(State())

    public init() {}

    /// Whether the calling task holds the lock: for the preconditions and assertions of code
    /// that touches what the lock guards. A task that does not hold it, even while another does, is
    /// refused, so guarded state is touched under the lock by check, not by convention.
    public var isHeldByCurrentTask: Bool {
        guard let task = Self.currentTask else { return false }
        return state.withLock { $0.held && $0.owner == task }
    }

    private static var currentTask: Int? { withUnsafeCurrentTask { $0?.hashValue } }

    public nonisolated(nonsending) func lock() async {
        let acquired = state.withLock { state -> Bool in
            if state.held { return false }
            state.held = true
            return true
        }
        if acquired {
            becomeOwner()
            return
        }
        await park { (continuation: ParkedContinuation<Void>) in
            let handedOver = state.withLock { state -> Bool in
                // Unlocked between the first check and now: take it at once.
                if !state.held {
                    state.held = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if handedOver { continuation.resume() }
        }
        becomeOwner()
    }

    private func becomeOwner() {
        let task = Self.currentTask
        state.withLock { state in
            assert(state.held && state.owner == nil, "a task takes the lock only when it is held for it and owned by no other")
            state.owner = task
        }
    }

    public func unlock() {
        let next = state.withLock { state -> ParkedContinuation<Void>? in
            precondition(state.held, "AsyncLock unlocked while not held")
            state.owner = nil
            if let next = state.waiters.popFirst() { return next }
            state.held = false
            return nil
        }
        next?.resume()
    }

    /// Runs `body` holding the lock.
    public nonisolated(nonsending) func withLock<T, E: Error>(_ body: () async throws(E) -> T) async throws(E) -> T {
        await lock()
        defer { unlock() }
        return try await body()
    }
}
