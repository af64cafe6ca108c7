import Glibc
import StrataGraph
import StrataImageTools
import StrataRuntime

/// qemu-io's breakpoint commands, for images opened as `blkdebug:CONFIG:FILENAME`: hold the next
/// request that fires an event, wait until one is held, let it go.
extension IoInterpreter {
    func breakAt(_ arguments: [String]) async -> Bool {
        report(session.breakpoints?.setBreakpoint(event: arguments[0], tag: arguments[1]) ?? -ENOTSUP,
               "Could not set breakpoint")
    }

    func removeBreak(_ arguments: [String]) async -> Bool {
        report(session.breakpoints?.removeBreakpoint(tag: arguments[0]) ?? -ENOTSUP,
               "Could not remove breakpoint \(arguments[0])")
    }

    func resumeBreak(_ arguments: [String]) async -> Bool {
        report(session.breakpoints?.resume(tag: arguments[0]) ?? -ENOTSUP, "Could not resume request")
    }

    /// Waits until a request is held under the tag. qemu-io would wait for ever without a
    /// blkdebug node; this says so instead.
    func waitBreak(_ arguments: [String]) async -> Bool {
        guard let breakpoints = session.breakpoints else {
            out("Could not wait for breakpoint \(arguments[0]): \(String(cString: strerror(ENOTSUP)))")
            return false
        }
        let executor = session.engine.control
        while !breakpoints.isSuspended(tag: arguments[0]) {
            // The held request runs on a queue executor; this polls from the control one.
            await Task(executorPreference: executor) { await executor.sleep(untilNs: MonotonicClock.now() + 200_000) }.value
        }
        return true
    }

    private func report(_ result: Int32, _ failure: String) -> Bool {
        guard result < 0 else { return true }
        out("\(failure): \(String(cString: strerror(-result)))")
        return false
    }
}
