import StrataFormatting

/// A campaign's totals over many seeds, as `strata sim` prints them at the end (and as JSON for
/// Bench/results/reliability.md).
public struct SimulationSummary: Sendable {
    public private(set) var seeds = 0
    public private(set) var failedSeeds: [UInt64] = []
    public private(set) var powerCuts = 0
    public private(set) var sectorsKept = 0
    public private(set) var sectorsLost = 0
    public private(set) var faults = 0
    public private(set) var diskRequests = 0
    public private(set) var imagesChecked = 0
    public private(set) var qemuImgChecks = 0
    public private(set) var dirtyRepaired = 0
    public private(set) var leakedClusters = 0
    public private(set) var sectorsVerified = 0
    public private(set) var wrongSectors = 0
    public private(set) var tally = SimulationTally()

    public init() {}

    public mutating func add(_ outcome: SimulationOutcome) {
        seeds += 1
        if !outcome.passed { failedSeeds.append(outcome.settings.seed) }
        if let cut = outcome.cut {
            powerCuts += 1
            sectorsKept += cut.sectorsKept
            sectorsLost += cut.sectorsLost
        }
        faults += outcome.disk.faults
        diskRequests += outcome.disk.requests
        if outcome.sectorsVerified > 0 { imagesChecked += 1 }
        if outcome.qemuImgChecked { qemuImgChecks += 1 }
        if outcome.repairedDirty { dirtyRepaired += 1 }
        leakedClusters += outcome.leakedClusters
        sectorsVerified += outcome.sectorsVerified
        wrongSectors += outcome.wrongSectors
        tally.merge(outcome.tally)
    }

    public func text(seconds: Double) -> String {
        let rate = seconds > 0 ? Double(seeds) / seconds : 0
        var lines = [
            "\(seeds) seeds in \(DecimalText.fixed(seconds, 1)) s (\(DecimalText.fixed(rate, 1)) seeds/s): \(seeds - failedSeeds.count) passed, \(failedSeeds.count) failed",
            "\(powerCuts) power cuts (\(sectorsKept) unflushed sectors kept, \(sectorsLost) lost), \(faults) faults injected in \(diskRequests) disk requests",
            "\(imagesChecked) images checked by strata's checker, \(qemuImgChecks) by qemu-img check, \(dirtyRepaired) dirty (lazy refcounts) repaired first, \(leakedClusters) clusters leaked",
            "\(sectorsVerified) sectors read back, \(wrongSectors) wrong",
            "guest operations: " + SimulationTally.Kind.allCases.map { "\($0.rawValue) \(tally.issued[$0] ?? 0) (\(tally.failed[$0] ?? 0) failed)" }.joined(separator: ", "),
        ]
        if !failedSeeds.isEmpty { lines.append("failed seeds: " + failedSeeds.map(String.init).joined(separator: " ")) }
        return lines.joined(separator: "\n")
    }

    public func json(seconds: Double) -> String {
        let operations = SimulationTally.Kind.allCases.map { "\"\($0.rawValue)\": {\"issued\": \(tally.issued[$0] ?? 0), \"failed\": \(tally.failed[$0] ?? 0)}" }
        return "{\"seeds\": \(seeds), \"failed\": \(failedSeeds.count), \"failed-seeds\": [\(failedSeeds.map(String.init).joined(separator: ", "))], "
            + "\"seconds\": \(DecimalText.fixed(seconds, 1)), \"power-cuts\": \(powerCuts), \"sectors-kept\": \(sectorsKept), \"sectors-lost\": \(sectorsLost), "
            + "\"faults\": \(faults), \"disk-requests\": \(diskRequests), \"images-checked\": \(imagesChecked), \"qemu-img-checks\": \(qemuImgChecks), "
            + "\"dirty-repaired\": \(dirtyRepaired), \"leaked-clusters\": \(leakedClusters), \"sectors-verified\": \(sectorsVerified), "
            + "\"wrong-sectors\": \(wrongSectors), \"operations\": {\(operations.joined(separator: ", "))}}"
    }
}
