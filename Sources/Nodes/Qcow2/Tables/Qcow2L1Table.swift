import Synchronization

/// A qcow2 node's active L1 table in host byte order, shared by its queues. Readers load entries
/// without a lock; only the allocation path (holding the node's allocation lock) stores them, after
/// the L2 table an entry points to is complete in the L2 cache.
final class Qcow2L1Table: Sendable {
    /// Entries the image size needs; the table on disk may hold more (saved VM state).
    let count: Int
    /// Fixed for the node's life: a live resize would replace the whole table.
    private nonisolated(unsafe) let entries: UnsafeMutablePointer<Atomic<UInt64>>
    // `entries` is only read and written through atomics, and freed in deinit once no instance
    // can reach the table; hence nonisolated(unsafe) on an immutable pointer.

    init(_ values: [UInt64]) {
        count = values.count
        entries = .allocate(capacity: max(1, values.count))
        for (index, value) in values.enumerated() { (entries + index).initialize(to: Atomic(value)) }
    }

    deinit {
        entries.deinitialize(count: count)
        entries.deallocate()
    }

    subscript(index: Int) -> UInt64 {
        entries[index].load(ordering: .acquiring)
    }

    /// Only under the allocation lock.
    func store(_ value: UInt64, at index: Int) {
        entries[index].store(value, ordering: .releasing)
    }
}
