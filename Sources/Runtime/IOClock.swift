import Dispatch
import Glibc

/// Time as the engine sees it: injected, so timing logic (throttling) runs on a virtual clock in tests.
public protocol IOClock: Sendable {
    /// Monotonic nanoseconds.
    var nowNs: UInt64 { get }
    /// Suspends the caller until `nowNs` reaches `deadlineNs`.
    func sleep(untilNs deadlineNs: UInt64) async
}

/// CLOCK_MONOTONIC; sleeps through the current queue executor's ring (an io_uring timeout), so a
/// sleeping request never blocks or leaves its thread.
public struct MonotonicClock: IOClock {
    public init() {}

    @inline(__always) public var nowNs: UInt64 { Self.now() }

    @inline(__always) public static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    public func sleep(untilNs deadlineNs: UInt64) async {
        if let executor = QueueExecutor.current {
            await executor.sleep(untilNs: deadlineNs)
        } else {
            // Not Task.sleep: the programs' global executor (ThreadAffineExecutors) has no delayed
            // jobs, and Task.sleep traps there. Dispatch's timers work wherever the caller runs.
            let now = Self.now()
            guard deadlineNs > now else { return }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(min(deadlineNs - now, UInt64(Int.max))))) {
                    continuation.resume()
                }
            }
        }
    }
}
