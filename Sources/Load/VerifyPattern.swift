/// The data a verifying load writes: every 8-byte word derives from (seed, block, generation,
/// word index), so a read of a block proves which write it saw, or that it saw none.
public enum VerifyPattern {
    @inline(__always) static func word(seed: UInt64, block: UInt64, generation: UInt32, index: Int) -> UInt64 {
        RequestStream.splitmix(seed ^ (block &* 0x100_0000_01B3) ^ (UInt64(generation) << 40) ^ UInt64(index))
    }

    public static func fill(_ buffer: UnsafeMutableRawPointer, count: Int, seed: UInt64, block: UInt64, generation: UInt32) {
        let words = count / 8
        let base = buffer.assumingMemoryBound(to: UInt64.self)
        for index in 0..<words { base[index] = word(seed: seed, block: block, generation: generation, index: index) }
    }

    /// True when the buffer holds exactly what `fill` wrote for this block and generation.
    public static func matches(_ buffer: UnsafeRawPointer, count: Int, seed: UInt64, block: UInt64, generation: UInt32) -> Bool {
        let words = count / 8
        let base = buffer.assumingMemoryBound(to: UInt64.self)
        for index in 0..<words where base[index] != word(seed: seed, block: block, generation: generation, index: index) {
            return false
        }
        return true
    }
}
