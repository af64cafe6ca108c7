/// Which operations the simulated guest favours (`strata sim --workload`), as shares per thousand.
public enum SimulationMix: String, CaseIterable, Sendable {
    /// Everything: writes, reads, write-zeroes, discards, compressed writes, flushes, edits.
    case mixed
    /// Allocating writes and flushes only, the densest path through qcow2's allocation.
    case writes
    /// Snapshots created and deleted and the image grown between short bursts of I/O.
    case edits

    /// Cumulative shares per thousand of write, read, write-zeroes, discard, compressed write, flush; the rest are edits.
    var cumulativeShares: [UInt64] {
        switch self {
        case .mixed: [400, 600, 680, 740, 800, 950]
        case .writes: [850, 850, 850, 850, 850, 1000]
        case .edits: [300, 400, 450, 500, 550, 650]
        }
    }
}
