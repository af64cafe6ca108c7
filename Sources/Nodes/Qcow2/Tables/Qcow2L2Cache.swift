import CStrataShim
import StrataRuntime
import Synchronization

/// Recently used L2 tables of one qcow2 node, shared by its instances on every queue: a bounded
/// LRU keyed by the table's offset in the image file, holding each table as stored on disk
/// (big-endian entries) so a dirty table is written back from its slot. Its memory is allocated
/// once at open, so a hit or a miss allocates nothing.
///
/// Lookups are lock-free when the caller knows the slot (`Qcow2SlotMemo`): each slot has a
/// sequence counter, odd while the slot is being refilled (a seqlock), so a reader loads the
/// slot's table offset and the word and checks the counter did not move. Filling, evicting and
/// the dirty bookkeeping happen under a Mutex; single-word updates of an entry are atomic stores
/// and need no counter bump (a reader sees the old or the new mapping, both valid).
///
/// A dirty table is never evicted: it is the only copy of acknowledged mappings until the
/// metadata flush writes it, and readers would otherwise read a stale table from disk.
final class Qcow2L2Cache: Sendable {
    private struct Slots {
        let tableBytes: Int
        let capacity: Int
        var slotOfOffset: [UInt64: Int]
        var dirty: [Bool]
        var dirtyCount = 0
        var used = 0
    }

    let capacity: Int
    let tableBytes: Int
    /// Slot memory, page-aligned so a table is written back without a bounce.
    private nonisolated(unsafe) let storage: UnsafeMutableRawPointer
    /// Per slot: the table offset it holds (0: none), its sequence counter, its last use.
    private nonisolated(unsafe) let slotTable: UnsafeMutablePointer<Atomic<UInt64>>
    private nonisolated(unsafe) let sequence: UnsafeMutablePointer<Atomic<UInt64>>
    private nonisolated(unsafe) let lastUse: UnsafeMutablePointer<Atomic<UInt64>>
    // The four pointers above are immutable and freed in deinit; what they point to is atomics
    // or slot memory guarded as described above, hence nonisolated(unsafe).
    private let clock = Atomic<UInt64>(0)
    private let slots: Locked<Slots>

    /// A cache of `capacity` tables of `tableBytes` bytes each.
    init(capacity: Int, tableBytes: Int) {
        precondition(capacity > 0 && tableBytes > 0)
        self.capacity = capacity
        self.tableBytes = tableBytes
        guard let memory = strata_alloc_aligned(capacity * tableBytes, 4096, -1) else {
            fatalError("out of memory allocating a \(capacity)-table L2 cache")
        }
        storage = memory
        slotTable = .allocate(capacity: capacity)
        sequence = .allocate(capacity: capacity)
        lastUse = .allocate(capacity: capacity)
        for slot in 0..<capacity {
            (slotTable + slot).initialize(to: Atomic(0))
            (sequence + slot).initialize(to: Atomic(0))
            (lastUse + slot).initialize(to: Atomic(0))
        }
        var slotOfOffset: [UInt64: Int] = [:]
        // Reserved up front: insertions after eviction stay within it, so they never allocate.
        slotOfOffset.reserveCapacity(capacity)
        slots = Locked(Slots(tableBytes: tableBytes, capacity: capacity, slotOfOffset: slotOfOffset,
                            dirty: Array(repeating: false, count: capacity)))
    }

    deinit {
        strata_free_aligned(storage, capacity * tableBytes, -1)
        slotTable.deinitialize(count: capacity)
        slotTable.deallocate()
        sequence.deinitialize(count: capacity)
        sequence.deallocate()
        lastUse.deinitialize(count: capacity)
        lastUse.deallocate()
    }

    private func table(_ slot: Int) -> UnsafeMutableRawPointer { storage + slot * tableBytes }

    /// Lookups trust their callers' slot memos and table indexes; debug builds check them.
    @inline(__always)
    private func assertInside(slot: Int? = nil, index: Int, words: Int) {
        assert(slot.map { $0 >= 0 && $0 < capacity } ?? true, "L2 cache slot \(slot ?? -1) outside 0..<\(capacity)")
        assert(index >= 0 && (index + words) * 8 <= tableBytes, "L2 entry \(index) outside a \(tableBytes)-byte table")
    }

    private func touch(_ slot: Int) {
        lastUse[slot].store(clock.wrappingAdd(1, ordering: .relaxed).newValue, ordering: .relaxed)
    }

    // MARK: Seqlock

    // The seqlock as the C++ memory model (which Swift's atomics follow) needs it, not as x86
    // happens to order it (Boehm, "Can seqlocks get along with programming language memory
    // models?", 2012): the writer makes the counter odd, then a release fence orders that before
    // its stores to the table; a reader loads the counter (acquire), the words (relaxed atomics),
    // then an acquire fence, then the counter again. A reader that saw any word of a write
    // therefore sees the odd counter, or a later one, in its second load and retries.

    /// Called under the Mutex, before the first store to `slot`'s table or offset.
    @inline(__always) private func beginWrite(_ slot: Int) {
        let odd = sequence[slot].wrappingAdd(1, ordering: .relaxed).newValue
        assert(odd & 1 == 1, "one writer at a time: the slot's sequence was even under the Mutex")
        atomicMemoryFence(ordering: .releasing)
    }

    /// Called after the last store: the release increment publishes them with the even counter.
    @inline(__always) private func endWrite(_ slot: Int) {
        sequence[slot].wrappingAdd(1, ordering: .releasing)
    }

    // MARK: Lookups

    /// Word `index` of the table at `tableOffset` if `slot` still holds it, without a lock; nil
    /// when the slot changed or is being refilled (the caller then takes `entry`).
    @inline(__always)
    func entry(tableOffset: UInt64, index: Int, slot: Int) -> UInt64? {
        assertInside(slot: slot, index: index, words: 1)
        let before = sequence[slot].load(ordering: .acquiring)
        guard before & 1 == 0, slotTable[slot].load(ordering: .relaxed) == tableOffset else { return nil }
        let word = strata_load_relaxed_u64(table(slot) + index * 8)
        atomicMemoryFence(ordering: .acquiring)
        guard sequence[slot].load(ordering: .relaxed) == before else { return nil }
        return UInt64(bigEndian: word)
    }

    /// Word `index` of the table at `tableOffset` (host order) and the slot holding it, or nil
    /// when the table is not cached.
    func entry(tableOffset: UInt64, index: Int) -> (word: UInt64, slot: Int)? {
        assertInside(index: index, words: 1)
        return slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return nil }
            touch(slot)
            return (UInt64(bigEndian: strata_load_relaxed_u64(table(slot) + index * 8)), slot)
        }
    }

    /// Words `index` and `index + 1` (an extended L2 entry and its subcluster bitmap) if `slot`
    /// still holds the table, without a lock; the sequence check also covers `storePair`, so the
    /// two always agree.
    @inline(__always)
    func entryPair(tableOffset: UInt64, index: Int, slot: Int) -> (UInt64, UInt64)? {
        assertInside(slot: slot, index: index, words: 2)
        let before = sequence[slot].load(ordering: .acquiring)
        guard before & 1 == 0, slotTable[slot].load(ordering: .relaxed) == tableOffset else { return nil }
        let entry = strata_load_relaxed_u64(table(slot) + index * 8)
        let bitmap = strata_load_relaxed_u64(table(slot) + index * 8 + 8)
        atomicMemoryFence(ordering: .acquiring)
        guard sequence[slot].load(ordering: .relaxed) == before else { return nil }
        return (UInt64(bigEndian: entry), UInt64(bigEndian: bitmap))
    }

    /// The same under the Mutex, with the slot for the caller's memo; nil when not cached.
    func entryPair(tableOffset: UInt64, index: Int) -> (UInt64, UInt64, slot: Int)? {
        assertInside(index: index, words: 2)
        return slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return nil }
            touch(slot)
            let base = table(slot)
            return (UInt64(bigEndian: strata_load_relaxed_u64(base + index * 8)),
                    UInt64(bigEndian: strata_load_relaxed_u64(base + index * 8 + 8)), slot)
        }
    }

    /// Forgets the (clean) table at `tableOffset`: its cluster was freed (a shrink), and may come
    /// back as another table or as data. Allocation lock held.
    func evict(tableOffset: UInt64) {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset.removeValue(forKey: tableOffset) else { return }
            precondition(!slots.dirty[slot], "a dirty L2 table is written back before its cluster is freed")
            // Lock-free readers holding the slot see the counter move and the offset gone.
            beginWrite(slot)
            slotTable[slot].store(0, ordering: .relaxed)
            endWrite(slot)
            lastUse[slot].store(0, ordering: .relaxed)
        }
    }

    func contains(tableOffset: UInt64) -> Bool {
        slots.withLock { $0.slotOfOffset[tableOffset] != nil }
    }

    // MARK: Filling

    /// A slot to fill: an unused one, or the least recently used clean one; nil when every slot
    /// is dirty. Mutex held.
    private func freeSlot(_ slots: inout Slots) -> Int? {
        if slots.used < slots.capacity {
            slots.used += 1
            return slots.used - 1
        }
        var oldest: Int?
        var oldestUse = UInt64.max
        for candidate in 0..<slots.capacity where !slots.dirty[candidate] {
            let use = lastUse[candidate].load(ordering: .relaxed)
            if use < oldestUse { (oldest, oldestUse) = (candidate, use) }
        }
        guard let oldest else { return nil }
        slots.slotOfOffset.removeValue(forKey: slotTable[oldest].load(ordering: .relaxed))
        return oldest
    }

    /// Refills `slot` with the table at `tableOffset` (Mutex held): the counter is odd meanwhile,
    /// so lock-free readers of the slot's old table fall back.
    private func fill(_ slot: Int, tableOffset: UInt64, from source: UnsafeRawPointer?, _ slots: inout Slots) {
        beginWrite(slot)
        slotTable[slot].store(tableOffset, ordering: .relaxed)
        // Word by word with atomic stores: lock-free readers may load these words meanwhile
        // (and then discard what they read), which plain copies would make a data race.
        let words = table(slot)
        for offset in stride(from: 0, to: slots.tableBytes, by: 8) {
            strata_store_relaxed_u64(words + offset, source.map { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } ?? 0)
        }
        endWrite(slot)
        slots.slotOfOffset[tableOffset] = slot
        touch(slot)
    }

    /// Caches the table at `tableOffset` read from disk into `source`. A table already cached
    /// stays as it is (it may hold changes newer than the disk). Returns false when every slot
    /// is dirty and the table could not be cached.
    @discardableResult
    func insert(tableOffset: UInt64, from source: UnsafeRawPointer) -> Bool {
        slots.withLock { slots in
            if let existing = slots.slotOfOffset[tableOffset] {
                touch(existing)
                return true
            }
            guard let slot = freeSlot(&slots) else { return false }
            fill(slot, tableOffset: tableOffset, from: source, &slots)
            return true
        }
    }

    /// Installs a new table (allocation lock held), dirty: the copy in the cache is the only one
    /// until written back. Returns false when every slot is dirty.
    ///
    /// The cluster may have held an L2 table before, freed since (the copy a write made of a table
    /// a snapshot shared, once the snapshot went) and still cached: no L1 entry names that old
    /// table any more, so its slot takes the new one.
    func install(tableOffset: UInt64, from source: UnsafeRawPointer?) -> Bool {
        slots.withLock { slots in
            if let stale = slots.slotOfOffset[tableOffset] {
                fill(stale, tableOffset: tableOffset, from: source, &slots)
                if !slots.dirty[stale] {
                    slots.dirty[stale] = true
                    slots.dirtyCount += 1
                }
                return true
            }
            guard let slot = freeSlot(&slots) else { return false }
            fill(slot, tableOffset: tableOffset, from: source, &slots)
            slots.dirty[slot] = true
            slots.dirtyCount += 1
            return true
        }
    }

    // MARK: Changing (allocation lock held)

    /// Stores word `index` of a cached table and marks it dirty. Returns false when the table is
    /// not cached.
    func store(_ value: UInt64, tableOffset: UInt64, index: Int) -> Bool {
        assertInside(index: index, words: 1)
        return slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return false }
            touch(slot)
            strata_store_relaxed_u64(table(slot) + index * 8, value.bigEndian)
            if !slots.dirty[slot] {
                slots.dirty[slot] = true
                slots.dirtyCount += 1
            }
            return true
        }
    }

    /// Stores words `index` and `index + 1` (an extended entry and its bitmap) with the slot's
    /// sequence counter odd meanwhile, so lock-free readers never see one without the other.
    func storePair(_ entry: UInt64, _ bitmap: UInt64, tableOffset: UInt64, index: Int) -> Bool {
        assertInside(index: index, words: 2)
        return slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset] else { return false }
            touch(slot)
            beginWrite(slot)
            strata_store_relaxed_u64(table(slot) + index * 8, entry.bigEndian)
            strata_store_relaxed_u64(table(slot) + index * 8 + 8, bitmap.bigEndian)
            endWrite(slot)
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

    /// The dirty tables' offsets and slot memory: it stays put and unchanged until `markClean`,
    /// since only the allocation lock holder changes or evicts dirty tables.
    func dirtyTables() -> [(offset: UInt64, table: UnsafeRawPointer)] {
        slots.withLock { slots in
            (0..<slots.used).filter { slots.dirty[$0] }.map { (slotTable[$0].load(ordering: .relaxed), UnsafeRawPointer(table($0))) }
        }
    }

    func markClean(tableOffset: UInt64) {
        slots.withLock { slots in
            guard let slot = slots.slotOfOffset[tableOffset], slots.dirty[slot] else { return }
            slots.dirty[slot] = false
            slots.dirtyCount -= 1
        }
    }
}
