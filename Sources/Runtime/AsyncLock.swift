import DequeModule
import Synchronization

/// Mutual exclusion for async code that must hold it across awaits (a qcow2 cluster allocation
/// writes metadata while holding it). Waiters suspend, never block their thread, so a queue
/// executor keeps serving other requests while one of its tasks waits. Unlocking hands the lock
/// to the oldest waiter, so no waiter starves.
public final class AsyncLock: Sendable {
    private struct State {
        var held = false
        var waiters: Deque<UnsafeContinuation<Void, Never>> = []
    }

    private let state = Mutex(State())

    public init() {}

    /// Whether some task holds the lock: for assertions of callers that must hold it.
    public var isHeld: Bool { state.withLock { $0.held } }

    public nonisolated(nonsending) func lock() async {
        let acquired = state.withLock { state -> Bool in
            if state.held { return false }
            state.held = true
            return true
        }
        if acquired { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
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
    }

    public func unlock() {
        let next = state.withLock { state -> UnsafeContinuation<Void, Never>? in
            precondition(state.held, "AsyncLock unlocked while not held")
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
