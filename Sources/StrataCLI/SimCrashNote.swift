import Glibc

/// Names the seed that was running when `strata sim` dies of a trap or a fault, so a campaign's
/// crash replays like any other failure: the message is made before each seed runs, and the
/// signal handler only writes it (write(2) is async-signal-safe) and dies of the same signal.
enum SimCrashNote {
    private static let capacity = 256
    // nonisolated(unsafe): written only by the simulation's one driving task between seeds, and
    // read only by the signal handler on that same process's crash, which never resumes it.
    nonisolated(unsafe) private static let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
    nonisolated(unsafe) private static var length = 0

    static func install() {
        for signal in [SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS, SIGFPE] {
            Glibc.signal(signal) { number in
                _ = write(2, SimCrashNote.buffer, SimCrashNote.length)
                Glibc.signal(number, SIG_DFL)
                raise(number)
            }
        }
    }

    static func running(seed: UInt64, replay: String) {
        let bytes = Array("\nstrata sim: crashed while running seed \(seed); replay: \(replay)\n".utf8.prefix(capacity))
        length = 0
        bytes.withUnsafeBufferPointer { buffer.update(from: $0.baseAddress!, count: $0.count) }
        length = bytes.count
    }
}
