/// How long an idle queue executor spins on its ring before it sleeps in the kernel, adapted as
/// QEMU adapts an iothread's (`poll-max-ns`, util/aio-posix.c): a completion that arrives while
/// spinning is seen without the sleep and wakeup that cost a request at queue depth 1 more than
/// the rest of its path on a virtual machine, and an idle queue soon stops spinning.
struct IdlePolling {
    /// The longest window; 0 never spins.
    let maxNs: UInt64
    /// The window the next idle period spins for.
    private(set) var windowNs: UInt64 = 0
    /// The first window after a sleep (QEMU's first growth step).
    static let initialNs: UInt64 = 4_000

    /// A `sched_yield` that took longer than this ran another thread: the CPU is shared with
    /// work that spinning would delay.
    static let contendedYieldNs: UInt64 = 3_000

    init(maxNs: UInt64) { self.maxNs = maxNs }

    /// Spinning gave the CPU to another thread: stop spinning until idle periods show again that
    /// a window would catch them.
    mutating func cpuWasContended() { windowNs = 0 }

    /// Adapts the window to an idle period that lasted `idleNs`, spinning included: a period the
    /// window covered keeps it; one longer than the longest window resets it to no spinning; one
    /// in between doubles it, up to `maxNs`.
    mutating func adapt(idleNs: UInt64) {
        if idleNs <= windowNs { return }
        if idleNs > maxNs {
            windowNs = 0
        } else {
            windowNs = min(maxNs, windowNs == 0 ? Self.initialNs : windowNs &* 2)
        }
        assert(windowNs <= maxNs)
    }
}
