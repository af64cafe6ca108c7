import CStrataShim

/// Refcount blocks of one qcow2 node, cached as stored on disk and touched only under the node's
/// allocation lock (so no lock of its own). Entries are read and written by `Qcow2RefcountCodec`.
final class Qcow2RefcountBlockCache {
    let capacity: Int
    let blockBytes: Int
    let codec: Qcow2RefcountCodec
    var maxRefcount: UInt64 { codec.maxRefcount }

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
        codec = Qcow2RefcountCodec(order: order)
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
        codec.get(block: UnsafeRawBufferPointer(start: block(slot), count: blockBytes), index: index)
    }

    func set(slot: Int, index: Int, value: UInt64) {
        codec.set(block: UnsafeMutableRawBufferPointer(start: block(slot), count: blockBytes), index: index, value: value)
        dirty[slot] = true
    }

    /// Dirty blocks as (offset, memory); the memory stays valid until the cache changes.
    func dirtyBlocks() -> [(offset: UInt64, memory: UnsafeRawPointer)] {
        (0..<used).filter { dirty[$0] }.map { (offsetOfSlot[$0], UnsafeRawPointer(block($0))) }
    }

    func markClean(offset: UInt64) {
        if let slot = slotOfOffset[offset] { dirty[slot] = false }
    }
}
