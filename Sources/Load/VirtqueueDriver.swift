import StrataDevices

/// The driver's side of a split virtqueue: what a guest does. Used by the built-in load generator
/// and by tests; the device side never trusts it.
///
/// Free descriptors form a list threaded through the table's `next` fields (as Linux does), so
/// allocating a chain of k hands out k descriptors already linked in order: write them with
/// `writeDescriptor`, following `nextIndex(after:)`. A chain stays allocated until `freeChain`,
/// which lets a load generator publish the same prepared chain again and again.
///
/// Noncopyable: the shadow indices and the free list belong to one owner; a copy would fork them.
/// Why `@unchecked Sendable` is safe: a noncopyable value has one owner at a time, so moving it to
/// another isolation domain moves the only handle to this side of the queue.
public struct VirtqueueDriver: ~Copyable, @unchecked Sendable {
    public let queue: SplitVirtqueue
    /// VIRTIO_F_EVENT_IDX negotiated: notifications use used_event/avail_event, not flags.
    public let eventIndex: Bool

    @usableFromInline var freeHead: UInt16
    @usableFromInline var freeDescriptors: Int
    /// avail.idx as this driver last wrote it.
    @usableFromInline var availableIndex: UInt16
    @usableFromInline var availableAtLastKick: UInt16
    /// The next used-ring position to reap, and the device's used.idx as last read.
    @usableFromInline var lastUsedIndex: UInt16
    @usableFromInline var cachedUsedIndex: UInt16
    /// Used elements whose id named no descriptor.
    public var outOfRangeIDs = 0

    /// Initializes the queue memory as a driver does before handing it to the device: both rings
    /// zeroed (spec: used flags start at 0) and every descriptor on the free list.
    ///
    /// With `alignedChainLength` L (at most 4), the free list runs through each 64-byte line of the
    /// table's first L descriptors first, then through the rest: while every chain has L
    /// descriptors (a chain goes back whole and comes out whole, so the grouping lasts), each
    /// chain has a cache line of its own, and a device on another CPU reading one chain never
    /// shares a line with the driver writing the next.
    public init(queue: SplitVirtqueue, eventIndex: Bool = false, alignedChainLength: Int? = nil) {
        self.queue = queue
        self.eventIndex = eventIndex
        let n = queue.size
        queue.descriptors.initializeMemory(as: UInt8.self, repeating: 0, count: 16 * n)
        queue.available.initializeMemory(as: UInt8.self, repeating: 0, count: 6 + 2 * n)
        queue.used.initializeMemory(as: UInt8.self, repeating: 0, count: 6 + 8 * n)
        var order = Array(0..<n)
        if let length = alignedChainLength, n >= Self.descriptorsPerLine {
            precondition(length > 0 && length <= Self.descriptorsPerLine, "a chain of \(length) does not fit one line")
            let grouped = (0..<n).filter { $0 % Self.descriptorsPerLine < length }
            order = grouped + (0..<n).filter { $0 % Self.descriptorsPerLine >= length }
        }
        for (position, index) in order.enumerated() {
            let next = position + 1 < n ? order[position + 1] : n
            queue.storeDescriptor(VirtqueueDescriptor(address: 0, length: 0, next: UInt16(truncatingIfNeeded: next)), at: UInt16(index))
        }
        freeHead = UInt16(order[0])
        freeDescriptors = n
        availableIndex = 0
        availableAtLastKick = 0
        lastUsedIndex = 0
        cachedUsedIndex = 0
    }

    /// 16-byte descriptors in a 64-byte cache line.
    public static let descriptorsPerLine = 4

    /// Descriptors on the free list.
    @inlinable public var freeCount: Int { freeDescriptors }

    /// Takes `length` linked descriptors off the free list and returns the head, or nil when fewer
    /// are free. The flags are stale until written.
    @inlinable
    public mutating func allocateChain(length: Int) -> UInt16? {
        guard length > 0, length <= freeDescriptors else { return nil }
        let head = freeHead
        var last = head
        for _ in 1..<length { last = nextIndex(after: last) }
        freeHead = nextIndex(after: last)  // garbage when the list empties; never read then
        freeDescriptors -= length
        return head
    }

    /// The descriptor linked after `index` (its `next` field).
    @inlinable @inline(__always)
    public func nextIndex(after index: UInt16) -> UInt16 {
        precondition(Int(index) < queue.size, "descriptor index out of range")
        return UInt16(littleEndian: queue.descriptors.loadUnaligned(fromByteOffset: 16 * Int(index) + 14, as: UInt16.self))
    }

    /// Writes address, length and flags of descriptor `index`, keeping its `next` link. Set
    /// `.next` on every descriptor but the chain's last. A descriptor that already says so is not
    /// written: a chain published again as it was leaves its cache line clean, so a device on
    /// another CPU still holds it.
    @inlinable @inline(__always)
    public func writeDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: VirtqueueDescriptor.Flags) {
        precondition(Int(index) < queue.size, "descriptor index out of range")
        let entry = queue.descriptors + 16 * Int(index)
        if entry.load(as: UInt64.self) == address.littleEndian && entry.load(fromByteOffset: 8, as: UInt32.self) == length.littleEndian
            && entry.load(fromByteOffset: 12, as: UInt16.self) == flags.rawValue.littleEndian {
            return
        }
        entry.storeBytes(of: address.littleEndian, as: UInt64.self)
        entry.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        entry.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
    }

    /// Returns a chain to the free list. The chain is followed through `.next` flags, so they must
    /// be as written for the chain (an indirect head counts as one descriptor).
    @inlinable
    public mutating func freeChain(head: UInt16) {
        var last = head
        var length = 1
        while queue.descriptor(at: last).flags.contains(.next) {
            last = nextIndex(after: last)
            length += 1
            precondition(length <= queue.size, "driver's own descriptor chain loops")
        }
        let entry = queue.descriptors + 16 * Int(last)
        entry.storeBytes(of: freeHead.littleEndian, toByteOffset: 14, as: UInt16.self)
        freeHead = head
        freeDescriptors += length
    }

    /// Makes the chain at `head` available: ring entry first, then a release store of avail.idx
    /// so the device that acquires the index sees the entry and the descriptors.
    @inlinable @inline(__always)
    public mutating func publish(head: UInt16) {
        stage(head: head)
        publishStaged()
    }

    /// Writes the ring entry for `head` without moving avail.idx: `publishStaged` then makes every
    /// staged chain available at once, so a device polling the ring from another CPU takes the
    /// batch whole instead of pulling the index's cache line over once per chain.
    @inlinable @inline(__always)
    public mutating func stage(head: UInt16) {
        queue.storeAvailableEntry(availableIndex, head: head)
        availableIndex &+= 1
    }

    /// One release store of avail.idx covering every chain staged so far.
    @inlinable @inline(__always)
    public func publishStaged() {
        queue.storeAvailableIndexRelease(availableIndex)
    }

    /// The next used element since the last call, or nil when the device has returned nothing new.
    /// Reads used.idx (acquire) only when the elements already seen run out. An element naming no
    /// descriptor (a broken device in another process) is counted in `outOfRangeIDs` and skipped.
    @inlinable
    public mutating func reapUsed() -> (id: UInt16, len: UInt32)? {
        while true {
            if lastUsedIndex == cachedUsedIndex {
                cachedUsedIndex = queue.loadUsedIndexAcquire()
                if lastUsedIndex == cachedUsedIndex { return nil }
            }
            let element = queue.loadUsedElement(lastUsedIndex)
            lastUsedIndex &+= 1
            if element.id < UInt32(queue.size) { return (UInt16(element.id), element.length) }
            outOfRangeIDs += 1
        }
    }

    /// Whether the device has returned an element not yet reaped (one acquire load when none is
    /// cached).
    @inlinable
    public mutating func hasUsed() -> Bool {
        if lastUsedIndex != cachedUsedIndex { return true }
        cachedUsedIndex = queue.loadUsedIndexAcquire()
        return lastUsedIndex != cachedUsedIndex
    }

    /// Whether the device must be notified (kicked) about chains published since the last call:
    /// vring_need_event on avail_event with EVENT_IDX, else unless used flags say NO_NOTIFY.
    @inlinable
    public mutating func needsNotification() -> Bool {
        SplitVirtqueue.storeLoadFence()  // avail.idx must be visible before reading avail_event
        let old = availableAtLastKick
        let new = availableIndex
        availableAtLastKick = new
        guard new != old else { return false }
        if eventIndex {
            return SplitVirtqueue.needsEvent(eventIndex: queue.loadAvailableEvent(), newIndex: new, oldIndex: old)
        }
        return queue.loadUsedFlags() & SplitVirtqueue.usedNoNotify == 0
    }

    /// EVENT_IDX: asks for a used-buffer notification once the device writes used entry `index`.
    /// Fenced, so a recheck of the used ring after it cannot miss an entry the device added while
    /// it did not yet see the new event.
    @inlinable
    public func setUsedEvent(_ index: UInt16) {
        queue.storeUsedEvent(index)
        SplitVirtqueue.storeLoadFence()
    }

    /// Without EVENT_IDX: sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT.
    @inlinable
    public func suppressUsedNotifications(_ suppress: Bool) {
        queue.storeAvailableFlags(suppress ? SplitVirtqueue.availableNoInterrupt : 0)
        SplitVirtqueue.storeLoadFence()
    }

    /// The used position the next `reapUsed` reads: what `setUsedEvent` takes to be woken for the
    /// very next completion.
    @inlinable public var nextUsedIndex: UInt16 { lastUsedIndex }

    /// avail.idx as last published.
    @inlinable public var publishedIndex: UInt16 { availableIndex }
}
