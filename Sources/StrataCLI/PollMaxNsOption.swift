import ArgumentParser

/// `--poll-max-ns`, shared by `strata serve` and `strata bench`: QEMU's iothread property, so a
/// queue at depth 1 sees its next request without a sleep and a wakeup. Twice QEMU's default
/// (32768 ns): on the 2-vCPU VMs measured, a client's turnaround at QD1 took 40-60 us, longer
/// than QEMU's window, which therefore never opened (design/executors.md has the figures).
enum PollMaxNsOption {
    static let defaultNs: UInt64 = 65_536
    /// A second of spinning already defeats the purpose; more is surely a typo.
    static let limitNs: UInt64 = 1_000_000_000

    static func validate(_ value: UInt64) throws {
        guard value <= limitNs else { throw ValidationError("--poll-max-ns must be 0-\(limitNs), got \(value)") }
    }
}
