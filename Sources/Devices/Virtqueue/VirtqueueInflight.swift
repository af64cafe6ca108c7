import Synchronization

/// One split virtqueue's record of the requests in flight, in memory the front end keeps across
/// back-end restarts (vhost-user's INFLIGHT_SHMFD, "Inflight I/O tracking"), laid out as
/// libvhost-user lays it out so back ends can take over from each other:
///
///     u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
///     { u8 inflight; u8 padding[5]; u16 next; u64 counter; } desc[desc_num]
///
/// A head is marked when popped (with a counter that orders resubmission) and cleared once its
/// used element is published; `used_idx` and `last_batch_head` let a successor tell whether the
/// last completion reached the used ring before the crash.
///
/// Why `@unchecked Sendable` is safe: a view of shared memory written by one device queue at a
/// time; the front end only stores it.
public struct VirtqueueInflight: @unchecked Sendable {
    public static let headerBytes = 16
    public static let entryBytes = 16

    /// libvhost-user's vu_inflight_queue_size: one queue's share of the region.
    public static func regionBytes(queueSize: Int) -> Int {
        (entryBytes * queueSize + 2 + 63) / 64 * 64
    }

    public let base: UnsafeMutableRawPointer
    public let queueSize: Int

    /// The region of `queueSize` entries at `base`: a new one (version 0) is initialized.
    public init(base: UnsafeMutableRawPointer, queueSize: Int) {
        precondition(Self.headerBytes + Self.entryBytes * queueSize <= Self.regionBytes(queueSize: queueSize))
        self.base = base
        self.queueSize = queueSize
        if load16(8) == 0 || Int(load16(10)) != queueSize {
            base.initializeMemory(as: UInt8.self, repeating: 0, count: Self.regionBytes(queueSize: queueSize))
            store16(1, at: 8)
            store16(UInt16(queueSize), at: 10)
        }
    }

    /// What a successor resumes from: the heads still in flight, oldest first, and the counter
    /// to continue with. Clears the last completion if it reached the used ring (`usedIndex`)
    /// but not this record.
    public func recover(usedIndex: UInt16) -> (heads: [UInt16], nextCounter: UInt64) {
        if load16(14) != usedIndex {
            let head = Int(load16(12))
            if head < queueSize { entry(head).storeBytes(of: 0, as: UInt8.self) }
            store16(usedIndex, at: 14)
        }
        var inflight: [(counter: UInt64, head: UInt16)] = []
        var highest: UInt64 = 0
        for head in 0..<queueSize {
            let counter = entry(head).loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            highest = max(highest, counter)
            if entry(head).load(as: UInt8.self) == 1 { inflight.append((counter, UInt16(head))) }
        }
        return (inflight.sorted { $0.counter < $1.counter }.map(\.head), highest + 1)
    }

    /// A head popped from the available ring.
    @inlinable
    public func fetched(_ head: UInt16, counter: UInt64) {
        let slot = entry(Int(head))
        slot.storeBytes(of: counter, toByteOffset: 8, as: UInt64.self)
        atomicMemoryFence(ordering: .releasing)
        slot.storeBytes(of: 1, as: UInt8.self)
    }

    /// Before the head's used element is published.
    @inlinable
    public func completing(_ head: UInt16) {
        entry(Int(head)).storeBytes(of: load16(12), toByteOffset: 6, as: UInt16.self)
        store16(head, at: 12)
        atomicMemoryFence(ordering: .releasing)
    }

    /// After the used index `usedIndex` that includes the head was published.
    @inlinable
    public func completed(_ head: UInt16, usedIndex: UInt16) {
        atomicMemoryFence(ordering: .releasing)
        entry(Int(head)).storeBytes(of: 0, as: UInt8.self)
        atomicMemoryFence(ordering: .releasing)
        store16(usedIndex, at: 14)
    }

    @inlinable func entry(_ head: Int) -> UnsafeMutableRawPointer {
        precondition(head < queueSize, "inflight entry \(head) of \(queueSize)")
        return base + Self.headerBytes + Self.entryBytes * head
    }

    @inlinable func load16(_ offset: Int) -> UInt16 { base.loadUnaligned(fromByteOffset: offset, as: UInt16.self) }
    @inlinable func store16(_ value: UInt16, at offset: Int) { base.storeBytes(of: value, toByteOffset: offset, as: UInt16.self) }
}
