import CStrataShim

/// Refcount blocks of one qcow2 node, cached as stored on disk and touched only under the node's
/// allocation lock (so no lock of its own). Entries are `1 << order` bits wide: sub-byte widths
/// packed from the least significant bit, wider ones big-endian (QEMU's get_refcount_ro*).
final class Qcow2RefcountBlockCache {
    let capacity: Int
    let blockBytes: Int
    let order: UInt32
    var maxRefcount: UInt64 { order == 6 ? .max : (UInt64(1) << (UInt64(1) << UInt64(order))) - 1 }

    private let storage: UnsafeMutableRawPointer
    private var slotOfOffset: [UInt64: Int] = [:]
    private var offsetOfSlot: [UInt64]
    private var lastUse: [UInt64]
    private var dirty: [Bool]
    private var used = 0
    private var clock: UInt64 = 0

    init(capacity: Int, blockBytes: Int, order: UInt32) {
        self.capacity = max(1, capacity)
        self.blockBytes = blockBytes
        self.order = order
        guard let memory = strata_alloc_aligned(self.capacity * blockBytes, 4096, -1) else {
            fatalError("out of memory allocating a refcount block cache")
        }
        storage = memory
        offsetOfSlot = Array(repeating: 0, count: self.capacity)
        lastUse = Array(repeating: 0, count: self.capacity)
        dirty = Array(repeating: false, count: self.capacity)
    }

    deinit {
        strata_free_aligned(storage, capacity * blockBytes, -1)
    }

    private func block(_ slot: Int) -> UnsafeMutableRawPointer { storage + slot * blockBytes }

    /// The cached block at `offset`, or nil.
    func slot(for offset: UInt64) -> Int? {
        guard let slot = slotOfOffset[offset] else { return nil }
        clock &+= 1
        lastUse[slot] = clock
        return slot
    }

    /// A slot for a block to be loaded or created at `offset`: an unused one or the least
    /// recently used. A dirty victim is handed back for the caller to write first.
    func victim() -> (slot: Int, dirtyOffset: UInt64?) {
        if used < capacity {
            used += 1
            return (used - 1, nil)
        }
        var oldest = 0
        for candidate in 1..<capacity where lastUse[candidate] < lastUse[oldest] { oldest = candidate }
        return (oldest, dirty[oldest] ? offsetOfSlot[oldest] : nil)
    }

    func memory(of slot: Int) -> UnsafeMutableRawPointer { block(slot) }

    /// Assigns `slot` to the block at `offset` (its memory filled by the caller).
    func assign(_ slot: Int, to offset: UInt64, dirty isDirty: Bool) {
        // Offset 0 is the header, never a refcount block: a fresh slot maps nothing.
        if slotOfOffset[offsetOfSlot[slot]] == slot { slotOfOffset.removeValue(forKey: offsetOfSlot[slot]) }
        slotOfOffset[offset] = slot
        offsetOfSlot[slot] = offset
        dirty[slot] = isDirty
        clock &+= 1
        lastUse[slot] = clock
    }

    func get(slot: Int, index: Int) -> UInt64 {
        Self.get(block(slot), order: order, index: index)
    }

    func set(slot: Int, index: Int, value: UInt64) {
        Self.set(block(slot), order: order, index: index, value: value)
        dirty[slot] = true
    }

    /// Entry `index` of the refcount block at `memory` with `1 << order`-bit entries.
    static func get(_ memory: UnsafeRawPointer, order: UInt32, index: Int) -> UInt64 {
        switch order {
        case 0, 1, 2:
            let width = 1 << Int(order)
            let bit = index * width
            let byte = memory.load(fromByteOffset: bit / 8, as: UInt8.self)
            return UInt64(byte >> UInt8(bit % 8)) & ((1 << UInt64(width)) - 1)
        case 3: return UInt64(memory.load(fromByteOffset: index, as: UInt8.self))
        case 4: return UInt64(UInt16(bigEndian: memory.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self)))
        case 5: return UInt64(UInt32(bigEndian: memory.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self)))
        default: return UInt64(bigEndian: memory.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self))
        }
    }

    static func set(_ memory: UnsafeMutableRawPointer, order: UInt32, index: Int, value: UInt64) {
        switch order {
        case 0, 1, 2:
            let width = 1 << Int(order)
            let bit = index * width
            let mask = UInt8(truncatingIfNeeded: ((1 << width) - 1) << (bit % 8))
            let old = memory.load(fromByteOffset: bit / 8, as: UInt8.self)
            let new = (old & ~mask) | (UInt8(truncatingIfNeeded: value << UInt64(bit % 8)) & mask)
            memory.storeBytes(of: new, toByteOffset: bit / 8, as: UInt8.self)
        case 3: memory.storeBytes(of: UInt8(truncatingIfNeeded: value), toByteOffset: index, as: UInt8.self)
        case 4: memory.storeBytes(of: UInt16(truncatingIfNeeded: value).bigEndian, toByteOffset: index * 2, as: UInt16.self)
        case 5: memory.storeBytes(of: UInt32(truncatingIfNeeded: value).bigEndian, toByteOffset: index * 4, as: UInt32.self)
        default: memory.storeBytes(of: value.bigEndian, toByteOffset: index * 8, as: UInt64.self)
        }
    }

    /// Dirty blocks as (offset, memory); the memory stays valid until the cache changes.
    func dirtyBlocks() -> [(offset: UInt64, memory: UnsafeRawPointer)] {
        (0..<used).filter { dirty[$0] }.map { (offsetOfSlot[$0], UnsafeRawPointer(block($0))) }
    }

    func markClean(offset: UInt64) {
        if let slot = slotOfOffset[offset] { dirty[slot] = false }
    }
}
