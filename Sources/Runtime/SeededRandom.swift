/// A small, fast generator whose whole future follows from one 64-bit seed (SplitMix64): the
/// simulation draws every latency, fault and power cut from it, so a seed replays exactly.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }

    /// True with probability `perMillion` / 1,000,000.
    public mutating func chance(perMillion: UInt32) -> Bool {
        perMillion > 0 && UInt32(next() % 1_000_000) < perMillion
    }

    /// A new generator for a separate stream, so draws on one stream do not shift another's.
    public mutating func split() -> SeededRandom { SeededRandom(seed: next()) }
}
