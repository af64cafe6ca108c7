/// The bytes the simulated guest writes: every 512-byte sector says which write put it there and
/// where, so reading it back names the write (or shows it torn, misplaced or garbage). The body
/// repeats in runs of 16 equal bytes, so compressed writes really compress.
enum SectorPattern {
    static let sectorBytes = 512
    /// The value of a sector never written: zeros, or the backing file's pattern under it.
    static let zeroValue: UInt64 = 0
    static let backingValue: UInt64 = 1

    /// The 8 bytes at `offset` (16 or more, a multiple of 8) of the sector holding `value`.
    @inline(__always) private static func bodyWord(seed: UInt64, offset: Int) -> UInt64 {
        (seed >> UInt64((offset >> 4) % 8 * 8) & 0xff) &* 0x0101_0101_0101_0101
    }

    private static func seed(value: UInt64, sector: UInt64) -> UInt64 {
        (value &* 0x9E37_79B9_7F4A_7C15) ^ (sector &* 0xBF58_476D_1CE4_E5B9)
    }

    static func fill(_ destination: UnsafeMutableRawPointer, value: UInt64, sector: UInt64) {
        if value == zeroValue {
            destination.initializeMemory(as: UInt8.self, repeating: 0, count: sectorBytes)
            return
        }
        destination.storeBytes(of: value.littleEndian, as: UInt64.self)
        destination.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        let seed = seed(value: value, sector: sector)
        for offset in stride(from: 16, to: sectorBytes, by: 8) {
            destination.storeBytes(of: bodyWord(seed: seed, offset: offset), toByteOffset: offset, as: UInt64.self)
        }
    }

    /// Which value the sector read back holds, or nil when it is none the guest wrote there.
    static func decode(_ source: UnsafeRawPointer, sector: UInt64) -> UInt64? {
        let value = UInt64(littleEndian: source.loadUnaligned(as: UInt64.self))
        if value == zeroValue {
            for offset in stride(from: 8, to: sectorBytes, by: 8) where source.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != 0 {
                return nil
            }
            return zeroValue
        }
        guard UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) == sector else { return nil }
        let seed = seed(value: value, sector: sector)
        for offset in stride(from: 16, to: sectorBytes, by: 8)
        where source.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != bodyWord(seed: seed, offset: offset) {
            return nil
        }
        return value
    }
}
