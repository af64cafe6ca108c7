import StrataImageTools
import StrataRuntime

/// Everything one seed decides before the run: the image's features, the guest's depth and
/// number of operations, the disk's faults and when the power goes. Printed with the outcome, so
/// a failing seed says what it ran.
public struct SimulationSettings: Sendable, CustomStringConvertible {
    public let seed: UInt64
    public let mix: SimulationMix
    public let operations: Int
    public let depth: Int
    public let sizeBytes: UInt64
    public let clusterSize: Int
    public let refcountBits: Int
    public let version: UInt32
    public let lazyRefcounts: Bool
    public let extendedL2: Bool
    public let compression: Qcow2CreateOptions.CompressionType
    public let hasBacking: Bool
    public let faultPerMillion: UInt32
    public let maxLatencyTurns: Int
    /// The power goes at this request of the image's disk (1-based), or after the last operation.
    public let cutAtRequest: Int
    /// Small, so metadata is evicted and written back often.
    public let l2CacheBytes: Int

    /// The disk acknowledges flushes and keeps nothing (`--lying-disk`): every seed should fail.
    public let lyingDisk: Bool

    public init(seed: UInt64, operations: Int? = nil, mix: SimulationMix = .mixed, lyingDisk: Bool = false) {
        var random = SeededRandom(seed: seed ^ 0x5157_5354_5241_5441)
        self.seed = seed
        self.mix = mix
        self.lyingDisk = lyingDisk
        self.operations = operations ?? 64 + Int(random.next() % 448)
        depth = 1 + Int(random.next() % 8)
        clusterSize = [512, 4096, 4096, 65536, 65536, 2048][Int(random.next() % 6)]
        sizeBytes = (1 << 20) * (1 + random.next() % 8)
        version = random.next() % 5 == 0 ? 2 : 3
        refcountBits = version == 2 ? 16 : [1, 2, 4, 8, 16, 16, 32, 64][Int(random.next() % 8)]
        lazyRefcounts = version == 3 && random.next() % 3 == 0
        // Subclusters need clusters of at least 16 KiB in QEMU's qemu-img.
        extendedL2 = version == 3 && clusterSize >= 16384 && random.next() % 4 == 0
        compression = version == 3 && random.next() % 2 == 0 ? .zstd : .zlib
        hasBacking = random.next() % 3 == 0
        faultPerMillion = random.next() % 2 == 0 ? 0 : UInt32(2_000 + random.next() % 30_000)
        maxLatencyTurns = Int(random.next() % 12)
        cutAtRequest = 1 + Int(random.next() % UInt64(self.operations * 2))
        l2CacheBytes = 8 * 1024 * (1 + Int(random.next() % 4))
    }

    /// The command that runs this seed alone, as it ran here.
    public var replayCommand: String {
        "strata sim --seed \(seed)" + (operations == SimulationSettings(seed: seed).operations ? "" : " --ops \(operations)")
            + (mix == .mixed ? "" : " --workload \(mix.rawValue)") + (lyingDisk ? " --lying-disk" : "")
    }

    public var description: String {
        "qcow2 v\(version) cluster \(clusterSize) refcount-bits \(refcountBits)"
            + (lazyRefcounts ? " lazy-refcounts" : "") + (extendedL2 ? " subclusters" : "")
            + " \(compression.rawValue) size \(sizeBytes)" + (lyingDisk ? " on a lying disk" : "") + (hasBacking ? " backing" : "")
            + ", \(operations) \(mix.rawValue) ops at depth \(depth), faults \(faultPerMillion) ppm, latency <= \(maxLatencyTurns) turns, power cut at request \(cutAtRequest)"
    }
}
