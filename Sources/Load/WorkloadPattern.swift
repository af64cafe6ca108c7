import StrataGraph

/// fio's rw modes.
public enum WorkloadMode: String, Sendable, CaseIterable, Codable {
    case read, write, randread, randwrite, randrw, rw

    public var isRandom: Bool { self == .randread || self == .randwrite || self == .randrw }
    public var isMixed: Bool { self == .randrw || self == .rw }
    public var writes: Bool { self != .read && self != .randread }
}

/// What one queue of the load generator asks for.
public struct WorkloadSpec: Sendable, Equatable {
    public var mode: WorkloadMode = .randread
    /// Percentage of reads in mixed modes (fio's rwmixread).
    public var readPercent = 50
    public var blockSizeBytes = 4096
    public var queueDepth = 32
    public var seed: UInt64 = 1
    /// Check every read against what this run wrote there.
    public var verify = false

    public init() {}
}

/// A seeded stream of (operation, offset) for one queue: the same seed gives the same stream.
/// In verify mode each queue owns the blocks `block % queueCount == queueIndex`, so no two
/// queues race on one block.
public struct RequestStream: Sendable {
    public let spec: WorkloadSpec
    public let blockCount: UInt64
    private let queueIndex: UInt64
    private let queueCount: UInt64
    private var state: UInt64
    private var sequentialBlock: UInt64

    public init(spec: WorkloadSpec, capacityBytes: UInt64, queueIndex: Int, queueCount: Int) {
        precondition(spec.blockSizeBytes > 0 && queueCount > 0)
        self.spec = spec
        self.blockCount = capacityBytes / UInt64(spec.blockSizeBytes)
        self.queueIndex = UInt64(queueIndex)
        self.queueCount = UInt64(queueCount)
        // splitmix64 of (seed, queue) so queues get independent, reproducible streams.
        self.state = Self.splitmix(spec.seed &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(queueIndex + 1))
        if state == 0 { state = 1 }
        self.sequentialBlock = self.queueIndex
    }

    @inline(__always) static func splitmix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// xorshift64*: a few instructions per request.
    @inline(__always) public mutating func nextRandom() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }

    /// The next request's operation and block index.
    @inline(__always) public mutating func next() -> (operation: BlockOperation, block: UInt64) {
        let operation: BlockOperation
        switch spec.mode {
        case .read, .randread: operation = .read
        case .write, .randwrite: operation = .write
        case .randrw, .rw: operation = nextRandom() % 100 < UInt64(spec.readPercent) ? .read : .write
        }
        let slots = max(1, (blockCount &+ queueCount &- 1 &- queueIndex) / queueCount)
        let block: UInt64
        if spec.mode.isRandom {
            block = (nextRandom() % slots) &* queueCount &+ queueIndex
        } else {
            block = sequentialBlock
            sequentialBlock &+= queueCount
            if sequentialBlock >= blockCount { sequentialBlock = queueIndex }
        }
        return (operation, block)
    }
}
