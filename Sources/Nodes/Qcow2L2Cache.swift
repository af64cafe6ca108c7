import Synchronization

/// Recently used L2 tables of one qcow2 node, shared by its instances on every queue: a bounded
/// LRU keyed by the table's offset in the image file. Its memory is allocated once at open, so a
/// hit or a miss allocates nothing.
///
/// Protected by a Mutex for this slice: a lookup holds it for a dictionary probe and one load.
/// This is the place where lock-free reads (per-queue caches or an RCU-style table) come later.
final class Qcow2L2Cache: Sendable {
    /// The cache's contents; only touched under the lock.
    private struct Slots {
        let entriesPerTable: Int
        let capacity: Int
        /// Table entries, host byte order, `entriesPerTable` per slot.
        let storage: UnsafeMutablePointer<UInt64>
        var slotOfOffset: [UInt64: Int]
        var offsetOfSlot: [UInt64]
        var lastUse: [UInt64]
        var used = 0
        var clock: UInt64 = 0
    }

    let capacity: Int
    private let slots: Mutex<Slots>

    /// A cache of `capacity` tables of `entriesPerTable` entries each.
    init(capacity: Int, entriesPerTable: Int) {
        precondition(capacity > 0 && entriesPerTable > 0)
        self.capacity = capacity
        let storage = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity * entriesPerTable)
        var slotOfOffset: [UInt64: Int] = [:]
        // Reserved up front: insertions after eviction stay within it, so they never allocate.
        slotOfOffset.reserveCapacity(capacity)
        slots = Mutex(Slots(entriesPerTable: entriesPerTable, capacity: capacity, storage: storage, slotOfOffset: slotOfOffset,
                            offsetOfSlot: Array(repeating: 0, count: capacity), lastUse: Array(repeating: 0, count: capacity)))
    }

    deinit {
        slots.withLock { $0.storage.deallocate() }
    }

    /// Entry `index` of the L2 table at `tableOffset`, or nil when the table is not cached.
    func entry(tableOffset: UInt64, index: Int) -> UInt64? {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return nil }
            slots.clock &+= 1
            slots.lastUse[slot] = slots.clock
            return slots.storage[slot * slots.entriesPerTable + index]
        }
    }

    /// Caches the table at `tableOffset` from `table`, one cluster as stored in the image
    /// (big-endian entries), evicting the least recently used table when full.
    func insert(tableOffset: UInt64, table: UnsafeRawPointer) {
        slots.withLock { slots in
            let slot: Int
            if let existing = slots.slotOfOffset[tableOffset] {
                // Another queue missed on the same table at the same time.
                slot = existing
            } else if slots.used < slots.capacity {
                slot = slots.used
                slots.used += 1
            } else {
                var oldest = 0
                for candidate in 1..<slots.capacity where slots.lastUse[candidate] < slots.lastUse[oldest] { oldest = candidate }
                slots.slotOfOffset.removeValue(forKey: slots.offsetOfSlot[oldest])
                slot = oldest
            }
            slots.slotOfOffset[tableOffset] = slot
            slots.offsetOfSlot[slot] = tableOffset
            slots.clock &+= 1
            slots.lastUse[slot] = slots.clock
            let target = slots.storage + slot * slots.entriesPerTable
            for index in 0..<slots.entriesPerTable {
                target[index] = UInt64(bigEndian: table.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self))
            }
        }
    }
}
