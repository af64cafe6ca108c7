import StrataRuntime

/// Lets convert's workers write their chunks in source order (qemu-img convert without -W):
/// a worker waits until every earlier chunk has been written. A Mutex rather than an actor, so
/// handing the turn on resumes the next writer directly, without a hop through an executor.
final class ConvertWriteOrder: Sendable {
    private struct State {
        var nextToWrite = 0
        var waiting: [Int: ParkedContinuation<Void>] = [:]
    }

    private let state = Locked(State())

    func waitForTurn(_ index: Int) async {
        if state.withLock({ $0.nextToWrite == index }) { return }
        await park { (continuation: ParkedContinuation<Void>) in
            let now = state.withLock { state -> Bool in
                if state.nextToWrite == index { return true }
                state.waiting[index] = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    func finished(_ index: Int) {
        let next = state.withLock { state -> ParkedContinuation<Void>? in
            state.nextToWrite = index + 1
            return state.waiting.removeValue(forKey: index + 1)
        }
        next?.resume()
    }
}
