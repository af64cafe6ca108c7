import Glibc
import Synchronization

/// A qcow2 node's active L1 table in host byte order, shared by its queues. Readers load entries
/// without a lock; only the allocation path (holding the node's allocation lock) stores them, after
/// the L2 table an entry points to is complete in the L2 cache.
///
/// A writable node's table can change length live (block_resize): its memory is reserved for the
/// largest table qcow2 allows (32 MiB of address space, committed by the kernel only as entries
/// are used), so it never moves and readers never see it freed.
final class Qcow2L1Table: Sendable {
    private let countStorage: Atomic<Int>
    /// Entries the virtual size needs now; the table on disk may hold more (saved VM state).
    var count: Int { countStorage.load(ordering: .acquiring) }
    /// Entries the memory has room for.
    let capacity: Int
    /// Entries ever initialized (grown into); only under the allocation lock.
    private let initialized: Atomic<Int>
    private let reserved: Bool
    private nonisolated(unsafe) let entries: UnsafeMutablePointer<Atomic<UInt64>>
    // `entries` never moves and is only read and written through atomics, and freed in deinit
    // once no instance can reach the table; hence nonisolated(unsafe) on an immutable pointer.

    /// A table of `values`, with room for `capacity` entries (at least as many as values).
    init(_ values: [UInt64], capacity requested: Int? = nil) {
        let capacity = max(1, requested ?? values.count, values.count)
        self.capacity = capacity
        countStorage = Atomic(values.count)
        initialized = Atomic(values.count)
        if capacity > values.count {
            // Reserved, not committed: untouched pages cost nothing.
            let bytes = capacity * MemoryLayout<Atomic<UInt64>>.stride
            let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let memory, memory != MAP_FAILED else { fatalError("cannot reserve \(bytes) bytes for an L1 table") }
            entries = memory.bindMemory(to: Atomic<UInt64>.self, capacity: capacity)
            reserved = true
        } else {
            entries = .allocate(capacity: capacity)
            reserved = false
        }
        for (index, value) in values.enumerated() { (entries + index).initialize(to: Atomic(value)) }
    }

    deinit {
        entries.deinitialize(count: initialized.load(ordering: .relaxed))
        if reserved {
            munmap(UnsafeMutableRawPointer(entries), capacity * MemoryLayout<Atomic<UInt64>>.stride)
        } else {
            entries.deallocate()
        }
    }

    subscript(index: Int) -> UInt64 {
        entries[index].load(ordering: .acquiring)
    }

    /// Only under the allocation lock.
    func store(_ value: UInt64, at index: Int) {
        precondition(index < initialized.load(ordering: .relaxed), "L1 entry \(index) outside the table")
        entries[index].store(value, ordering: .releasing)
    }

    /// Changes how many entries the size needs (allocation lock held). Entries a grown table gains
    /// are unallocated (0); a shrunk table's entries past the new count must already be 0.
    func resize(to newCount: Int) {
        precondition(newCount <= capacity, "an L1 table of \(newCount) entries does not fit the \(capacity) reserved")
        let ready = initialized.load(ordering: .relaxed)
        if newCount > ready {
            for index in ready..<newCount { (entries + index).initialize(to: Atomic(0)) }
            initialized.store(newCount, ordering: .relaxed)
        }
        let current = count
        if newCount > current {
            for index in current..<newCount { entries[index].store(0, ordering: .relaxed) }
        } else {
            assert((newCount..<current).allSatisfy { self[$0] == 0 }, "entries dropped from the L1 table are unallocated first")
        }
        countStorage.store(newCount, ordering: .releasing)
    }
}
