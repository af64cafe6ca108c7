import DequeModule
import StrataRuntime

/// qemu-img bench's flush with draining: while a flush is due, no new request starts, and the
/// flush itself waits until every request in flight has completed.
public final class BenchFlushGate: Sendable {
    private struct State {
        var inFlight = 0
        var flushing = false
        var drained: ParkedContinuation<Void>?
        var waiting: Deque<ParkedContinuation<Void>> = []
        /// Flushes due while another runs: they go one after the other.
        var flushers: Deque<ParkedContinuation<Void>> = []
    }

    private let state = Locked(State())

    /// Before a request: waits while a flush is pending or running.
    public init() {}

    public func enter() async {
        let admitted = state.withLock { state -> Bool in
            guard !state.flushing else { return false }
            state.inFlight += 1
            return true
        }
        if admitted { return }
        await park { (continuation: ParkedContinuation<Void>) in
            let now = state.withLock { state -> Bool in
                guard state.flushing else {
                    state.inFlight += 1
                    return true
                }
                state.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// After a request completed.
    public func leave() {
        let drained = state.withLock { state -> ParkedContinuation<Void>? in
            state.inFlight -= 1
            guard state.inFlight == 0, let drained = state.drained else { return nil }
            state.drained = nil
            return drained
        }
        drained?.resume()
    }

    /// Runs `flush` once nothing is in flight, holding new requests back until it is done; a
    /// flush due while another runs follows it. The caller must have left the gate for its own
    /// request first.
    public func drainAndFlush(_ flush: () async -> Void) async {
        await park { (continuation: ParkedContinuation<Void>) in
            let now = state.withLock { state -> Bool in
                if state.flushing {
                    state.flushers.append(continuation)
                    return false
                }
                state.flushing = true
                return true
            }
            if now { continuation.resume() }
        }
        await park { (continuation: ParkedContinuation<Void>) in
            let now = state.withLock { state -> Bool in
                guard state.inFlight > 0 else { return true }
                state.drained = continuation
                return false
            }
            if now { continuation.resume() }
        }
        await flush()
        let (next, admitted) = state.withLock { state -> (ParkedContinuation<Void>?, Deque<ParkedContinuation<Void>>) in
            if let next = state.flushers.popFirst() { return (next, []) }
            state.flushing = false
            state.inFlight += state.waiting.count
            defer { state.waiting.removeAll() }
            return (nil, state.waiting)
        }
        next?.resume()
        for waiter in admitted { waiter.resume() }
    }
}
