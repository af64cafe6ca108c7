import StrataNodes

/// What one seed's run found. It passed when `problems` is empty.
public struct SimulationOutcome: Sendable {
    public let settings: SimulationSettings
    var digest = RunDigest()
    public var tally = SimulationTally()
    public var disk = SimCounters()
    public var cut: SimPowerCut?
    public var repairedDirty = false
    public var leakedClusters = 0
    /// COPIED flags that disagree with refcounts, allowed only after an interrupted snapshot operation.
    public var copiedFlagErrors = 0
    public var qemuImgChecked = false
    public var sectorsVerified = 0
    public var wrongSectors = 0
    public var problems: [String] = []
    /// Where the image and its backing file were left, for a failed seed (or when asked).
    public var keptAt: String?

    public var passed: Bool { problems.isEmpty }

    /// One line per seed, as `strata sim` prints it.
    public var line: String {
        let digestText = String(digest.value, radix: 16)
        let cutText = cut.map { "power cut at request \($0.atRequest) (\($0.sectorsKept) unflushed sectors kept, \($0.sectorsLost) lost)" } ?? "no power cut"
        var text = "seed \(settings.seed): \(passed ? "ok" : "FAILED"), \(tally.total) ops (\(tally.failures) failed), "
            + "\(disk.requests) disk requests, \(disk.faults) faults, \(cutText), "
            + (repairedDirty ? "dirty image repaired, " : "")
            + "\(leakedClusters) leaked clusters, " + (copiedFlagErrors > 0 ? "\(copiedFlagErrors) COPIED flags left by an interrupted snapshot, " : "") + "\(sectorsVerified) sectors verified, digest \(digestText)"
        for problem in problems { text += "\n  \(problem)" }
        if !passed {
            text += "\n  ran: \(settings)\n  replay: \(settings.replayCommand)"
        }
        if let keptAt { text += "\n  image kept in \(keptAt)" }
        return text
    }
}
