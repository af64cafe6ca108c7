import CStrataShim

/// Nanoseconds from the CPU's invariant time-stamp counter, calibrated once against
/// CLOCK_MONOTONIC, for timestamping every request (fio's `clocksource=cpu` does the same).
/// Where the CPU has no invariant TSC it reads CLOCK_MONOTONIC instead. Readings are comparable
/// with each other, not with `MonotonicClock`.
public enum CycleClock {
    private struct Calibration {
        let usable: Bool
        /// ns = ticks * multiplier >> 32
        let multiplier: UInt64
    }

    private static let calibration: Calibration = {
        guard strata_cpu_has_invariant_tsc() != 0 else { return Calibration(usable: false, multiplier: 0) }
        let startNs = MonotonicClock.now()
        let startTicks = strata_rdtsc()
        while MonotonicClock.now() - startNs < 20_000_000 {}
        let elapsedNs = MonotonicClock.now() - startNs
        let elapsedTicks = strata_rdtsc() - startTicks
        guard elapsedTicks > 0 else { return Calibration(usable: false, multiplier: 0) }
        return Calibration(usable: true, multiplier: (elapsedNs << 32) / elapsedTicks)
    }()

    /// Forces calibration now (20 ms), so the first measured request does not pay for it.
    public static func calibrate() { _ = calibration.usable }

    @inline(__always) public static func now() -> UInt64 {
        let calibration = calibration
        guard calibration.usable else { return MonotonicClock.now() }
        return UInt64((UInt128(strata_rdtsc()) &* UInt128(calibration.multiplier)) >> 32)
    }
}
