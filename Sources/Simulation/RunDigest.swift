/// FNV-1a over what a run did (every completion, every value read back, the disk after the cut):
/// two runs of one seed print the same digest, or the simulation is not deterministic.
struct RunDigest: Sendable, Equatable {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ words: UInt64...) {
        for word in words {
            for shift in stride(from: 0, to: 64, by: 8) {
                value = (value ^ ((word >> UInt64(shift)) & 0xff)) &* 0x0000_0100_0000_01B3
            }
        }
    }
}
