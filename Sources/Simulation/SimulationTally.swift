import StrataRuntime

/// How many of each operation the guest issued, and how many failed.
public struct SimulationTally: Sendable {
    public enum Kind: String, CaseIterable, Sendable {
        case write
        case compressedWrite = "compressed-write"
        case writeZeroes = "write-zeroes"
        case discard
        case read
        case flush
        case snapshotCreate = "snapshot-create"
        case snapshotDelete = "snapshot-delete"
        case resize
    }

    public private(set) var issued: [Kind: Int] = [:]
    public private(set) var failed: [Kind: Int] = [:]

    mutating func count(_ kind: Kind, _ status: IOStatus) {
        issued[kind, default: 0] += 1
        if !status.isOK { failed[kind, default: 0] += 1 }
    }

    public var total: Int { issued.values.reduce(0, +) }
    public var failures: Int { failed.values.reduce(0, +) }

    public mutating func merge(_ other: SimulationTally) {
        for (kind, count) in other.issued { issued[kind, default: 0] += count }
        for (kind, count) in other.failed { failed[kind, default: 0] += count }
    }
}
