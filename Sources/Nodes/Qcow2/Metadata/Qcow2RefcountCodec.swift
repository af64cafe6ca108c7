/// Reads and writes refcount entries of a qcow2 refcount block of 2^order bits each
/// (docs/interop/qcow2.rst: order 0-6). Entries narrower than a byte fill each byte from its
/// least significant bit, wider ones are big-endian, as QEMU's get/set_refcount_ro0..ro6.
public struct Qcow2RefcountCodec: Sendable, Equatable {
    let order: UInt32

    public init(order: UInt32) {
        precondition(order <= 6, "refcount order \(order) out of range")
        self.order = order
    }

    var bits: Int { 1 << Int(order) }
    /// The largest refcount an entry holds.
    public var maxRefcount: UInt64 { order == 6 ? .max : (UInt64(1) << UInt64(bits)) - 1 }

    /// Entries in one block of `clusterSize` bytes.
    public func entriesPerBlock(clusterSize: Int) -> Int { clusterSize * 8 / bits }

    /// Bytes `count` entries take, rounded up to whole bytes.
    func bytes(forEntries count: Int) -> Int { (count * bits + 7) / 8 }

    func get(block: UnsafeRawBufferPointer, index: Int) -> UInt64 {
        switch order {
        case 0, 1, 2:
            let perByte = 8 >> Int(order)
            let shift = (index % perByte) * bits
            return UInt64((block[index / perByte] >> UInt8(shift)) & UInt8((1 << bits) - 1))
        default:
            let width = bits / 8
            var value: UInt64 = 0
            for byte in 0..<width { value = value << 8 | UInt64(block[index * width + byte]) }
            return value
        }
    }

    /// Stores `value`, which must not exceed `maxRefcount`.
    func set(block: UnsafeMutableRawBufferPointer, index: Int, value: UInt64) {
        precondition(value <= maxRefcount, "refcount \(value) exceeds \(bits) bits")
        switch order {
        case 0, 1, 2:
            let perByte = 8 >> Int(order)
            let shift = UInt8((index % perByte) * bits)
            let mask = UInt8((1 << bits) - 1) << shift
            block[index / perByte] = (block[index / perByte] & ~mask) | (UInt8(value) << shift)
        default:
            let width = bits / 8
            var rest = value
            for byte in stride(from: width - 1, through: 0, by: -1) {
                block[index * width + byte] = UInt8(truncatingIfNeeded: rest)
                rest >>= 8
            }
        }
    }

    public func get(block: [UInt8], index: Int) -> UInt64 {
        block.withUnsafeBytes { get(block: $0, index: index) }
    }

    public func set(block: inout [UInt8], index: Int, value: UInt64) {
        block.withUnsafeMutableBytes { set(block: $0, index: index, value: value) }
    }
}
