import CStrataShim
import Synchronization

/// Recently used L2 tables of one qcow2 node, shared by its instances on every queue: a bounded
/// LRU keyed by the table's offset in the image file, holding each table as stored on disk
/// (big-endian entries) so a dirty table is written back from its slot. Its memory is allocated
/// once at open, so a hit or a miss allocates nothing.
///
/// Readers insert tables they missed on; the allocation path (under the node's allocation lock)
/// changes entries and marks tables dirty. A dirty table is never evicted: it is the only copy of
/// acknowledged mappings until the metadata flush writes it, and readers would otherwise read a
/// stale table from disk. A lookup holds the Mutex for a dictionary probe and one load.
final class Qcow2L2Cache: Sendable {
    private struct Slots {
        let tableBytes: Int
        let capacity: Int
        var slotOfOffset: [UInt64: Int]
        var offsetOfSlot: [UInt64]
        var lastUse: [UInt64]
        var dirty: [Bool]
        var dirtyCount = 0
        var used = 0
        var clock: UInt64 = 0

        mutating func touch(_ slot: Int) {
            clock &+= 1
            lastUse[slot] = clock
        }

        /// A slot to fill: an unused one, or the least recently used clean one; nil when every
        /// slot is dirty.
        mutating func freeSlot() -> Int? {
            if used < capacity {
                used += 1
                return used - 1
            }
            var oldest: Int?
            for candidate in 0..<capacity where !dirty[candidate] {
                if oldest.map({ lastUse[candidate] < lastUse[$0] }) ?? true { oldest = candidate }
            }
            guard let oldest else { return nil }
            slotOfOffset.removeValue(forKey: offsetOfSlot[oldest])
            return oldest
        }
    }

    let capacity: Int
    let tableBytes: Int
    /// Slot memory, page-aligned so a table is written back without a bounce. Slots are only
    /// filled under the Mutex and changed under the allocation lock.
    private nonisolated(unsafe) let storage: UnsafeMutableRawPointer
    // Immutable pointer; what it points to is guarded as described above.
    private let slots: Mutex<Slots>

    /// A cache of `capacity` tables of `tableBytes` bytes each.
    init(capacity: Int, tableBytes: Int) {
        precondition(capacity > 0 && tableBytes > 0)
        self.capacity = capacity
        self.tableBytes = tableBytes
        guard let memory = strata_alloc_aligned(capacity * tableBytes, 4096, -1) else {
            fatalError("out of memory allocating a \(capacity)-table L2 cache")
        }
        storage = memory
        var slotOfOffset: [UInt64: Int] = [:]
        // Reserved up front: insertions after eviction stay within it, so they never allocate.
        slotOfOffset.reserveCapacity(capacity)
        slots = Mutex(Slots(tableBytes: tableBytes, capacity: capacity, slotOfOffset: slotOfOffset,
                            offsetOfSlot: Array(repeating: 0, count: capacity), lastUse: Array(repeating: 0, count: capacity),
                            dirty: Array(repeating: false, count: capacity)))
    }

    deinit {
        strata_free_aligned(storage, capacity * tableBytes, -1)
    }

    private func table(_ slot: Int) -> UnsafeMutableRawPointer { storage + slot * tableBytes }

    /// The 64-bit word `index` of the table at `tableOffset` (host order), or nil when not cached.
    func entry(tableOffset: UInt64, index: Int) -> UInt64? {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return nil }
            slots.touch(slot)
            return UInt64(bigEndian: table(slot).load(fromByteOffset: index * 8, as: UInt64.self))
        }
    }

    /// Words `index` and `index + 1` of the table at `tableOffset` (host order): an extended L2
    /// entry and its subcluster bitmap, read under one lock so they agree; nil when not cached.
    func entryPair(tableOffset: UInt64, index: Int) -> (UInt64, UInt64)? {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return nil }
            slots.touch(slot)
            let base = table(slot)
            return (UInt64(bigEndian: base.load(fromByteOffset: index * 8, as: UInt64.self)),
                    UInt64(bigEndian: base.load(fromByteOffset: index * 8 + 8, as: UInt64.self)))
        }
    }

    func contains(tableOffset: UInt64) -> Bool {
        slots.withLock { $0.slotOfOffset[tableOffset] != nil }
    }

    /// Caches the table at `tableOffset` read from disk into `source`. A table already cached
    /// stays as it is (it may hold changes newer than the disk). Returns false when every slot
    /// is dirty and the table could not be cached.
    @discardableResult
    func insert(tableOffset: UInt64, from source: UnsafeRawPointer) -> Bool {
        slots.withLock { slots in
            if let existing = slots.slotOfOffset[tableOffset] {
                slots.touch(existing)
                return true
            }
            guard let slot = slots.freeSlot() else { return false }
            slots.slotOfOffset[tableOffset] = slot
            slots.offsetOfSlot[slot] = tableOffset
            slots.touch(slot)
            table(slot).copyMemory(from: source, byteCount: slots.tableBytes)
            return true
        }
    }

    /// Installs a new table (allocation lock held), dirty: the copy in the cache is the only one
    /// until written back. Returns false when every slot is dirty.
    func install(tableOffset: UInt64, from source: UnsafeRawPointer?) -> Bool {
        slots.withLock { slots in
            precondition(slots.slotOfOffset[tableOffset] == nil, "L2 table installed twice")
            guard let slot = slots.freeSlot() else { return false }
            slots.slotOfOffset[tableOffset] = slot
            slots.offsetOfSlot[slot] = tableOffset
            slots.touch(slot)
            if let source {
                table(slot).copyMemory(from: source, byteCount: slots.tableBytes)
            } else {
                table(slot).initializeMemory(as: UInt8.self, repeating: 0, count: slots.tableBytes)
            }
            slots.dirty[slot] = true
            slots.dirtyCount += 1
            return true
        }
    }

    /// Stores word `index` of a cached table (allocation lock held) and marks it dirty. Returns
    /// false when the table is not cached.
    func store(_ value: UInt64, tableOffset: UInt64, index: Int) -> Bool {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return false }
            slots.touch(slot)
            table(slot).storeBytes(of: value.bigEndian, toByteOffset: index * 8, as: UInt64.self)
            if !slots.dirty[slot] {
                slots.dirty[slot] = true
                slots.dirtyCount += 1
            }
            return true
        }
    }

    /// Stores words `index` and `index + 1` (an extended entry and its bitmap) under one lock, so
    /// readers never see one without the other.
    func storePair(_ entry: UInt64, _ bitmap: UInt64, tableOffset: UInt64, index: Int) -> Bool {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return false }
            slots.touch(slot)
            table(slot).storeBytes(of: entry.bigEndian, toByteOffset: index * 8, as: UInt64.self)
            table(slot).storeBytes(of: bitmap.bigEndian, toByteOffset: index * 8 + 8, as: UInt64.self)
            if !slots.dirty[slot] {
                slots.dirty[slot] = true
                slots.dirtyCount += 1
            }
            return true
        }
    }

    /// Copies the cached table at `tableOffset` into `target`; false when not cached.
    func copy(tableOffset: UInt64, into target: UnsafeMutableRawPointer) -> Bool {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return false }
            target.copyMemory(from: table(slot), byteCount: slots.tableBytes)
            return true
        }
    }

    var isFullOfDirtyTables: Bool { slots.withLock { $0.dirtyCount == $0.capacity } }
    var hasDirtyTables: Bool { slots.withLock { $0.dirtyCount > 0 } }

    /// The dirty tables' offsets and slot memory (allocation lock held: the memory stays put and
    /// unchanged until `markClean`, since only the lock holder changes or evicts dirty tables).
    func dirtyTables() -> [(offset: UInt64, table: UnsafeRawPointer)] {
        slots.withLock { slots in
            (0..<slots.used).filter { slots.dirty[$0] }.map { (slots.offsetOfSlot[$0], UnsafeRawPointer(table($0))) }
        }
    }

    func markClean(tableOffset: UInt64) {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset], slots.dirty[slot] else { return }
            slots.dirty[slot] = false
            slots.dirtyCount -= 1
        }
    }

    /// Drops a table that is no longer part of the image (allocation lock held).
    func remove(tableOffset: UInt64) {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset.removeValue(forKey: tableOffset) else { return }
            if slots.dirty[slot] {
                slots.dirty[slot] = false
                slots.dirtyCount -= 1
            }
            // Least recently used: reused first.
            slots.lastUse[slot] = 0
            slots.offsetOfSlot[slot] = UInt64.max
        }
    }
}
