import CStrataShim
/// The device's side of a split virtqueue: takes chain heads from the available ring, walks them
/// through `DescriptorChain` (which validates everything the driver wrote) and returns them on the
/// used ring. Nothing here allocates; a request costs an acquire load per batch of available
/// entries and a release store per used entry.
///
/// The device does not track which heads are in flight: a driver that publishes a head twice gets
/// two walks of whatever the table says. Devices that keep per-head state must refuse a head that
/// is already in flight.
///
/// Noncopyable: the shadow indices belong to one owner; a copy would fork them.
/// Why `@unchecked Sendable` is safe: a noncopyable value has one owner at a time, so moving it to
/// another isolation domain moves the only handle to this side of the queue.
public struct VirtqueueDevice: ~Copyable, @unchecked Sendable {
    public let queue: SplitVirtqueue
    /// VIRTIO_F_EVENT_IDX negotiated: notifications use used_event/avail_event, not flags.
    public let eventIndex: Bool
    /// The most descriptors an indirect table may hold; larger tables are `.badIndirectTable`.
    public let maxIndirectEntries: Int

    /// last_avail_idx: the next available-ring position to consume.
    @usableFromInline var lastAvailableIndex: UInt16
    /// avail.idx as last read, so a batch costs one acquire load.
    @usableFromInline var cachedAvailableIndex: UInt16
    /// used.idx as this device last wrote it.
    @usableFromInline var usedIndex: UInt16
    @usableFromInline var usedAtLastNotification: UInt16
    /// used.idx reaches the ring only in `needsNotification`, once per batch (QEMU's
    /// virtqueue_fill, then virtqueue_flush): a driver that polls the used ring then takes
    /// completions in batches, instead of one at a time, each costing both sides cache misses on
    /// the rings (measured: a back end stuck at 570 ns a request, against 230 ns batched). Not with
    /// an inflight record: its recovery assumes used.idx moves one chain at a time.
    public var defersUsedIndex = false

    /// A device starting at ring position 0 (a freshly initialized queue). The default indirect
    /// limit is QEMU's VIRTQUEUE_MAX_SIZE, which Linux guests stay within.
    public init(queue: SplitVirtqueue, eventIndex: Bool = false, maxIndirectEntries: Int = 1024) {
        self.init(queue: queue, eventIndex: eventIndex, maxIndirectEntries: maxIndirectEntries, nextAvailableIndex: 0, usedIndex: 0)
    }

    /// A device resuming a queue: the available position to consume next (vhost-user's
    /// SET_VRING_BASE) and the used index the driver last saw.
    public init(queue: SplitVirtqueue, eventIndex: Bool, maxIndirectEntries: Int, nextAvailableIndex: UInt16, usedIndex: UInt16) {
        precondition(maxIndirectEntries >= 1 && maxIndirectEntries <= 65536)
        self.queue = queue
        self.eventIndex = eventIndex
        self.maxIndirectEntries = maxIndirectEntries
        lastAvailableIndex = nextAvailableIndex
        cachedAvailableIndex = nextAvailableIndex
        self.usedIndex = usedIndex
        usedAtLastNotification = usedIndex
    }

    /// The head of the next available chain, or nil when the driver published nothing new. The
    /// head is not checked here: `chain(head:)` rejects one out of range.
    @inlinable
    public mutating func popAvail() throws(VirtqueueError) -> UInt16? {
        if lastAvailableIndex == cachedAvailableIndex {
            let published = queue.loadAvailableIndexAcquire()
            // More than N entries ahead would overwrite ring slots not yet consumed.
            guard Int(published &- lastAvailableIndex) <= queue.size else { throw .availableIndexOverrun }
            cachedAvailableIndex = published
            if published == lastAvailableIndex { return nil }
            prefetchDescriptors(from: lastAvailableIndex, to: published)
        }
        let head = queue.loadAvailableEntry(lastAvailableIndex)
        lastAvailableIndex &+= 1
        prefetchFirstBuffer(at: lastAvailableIndex)
        return head
    }

    /// Most chains whose descriptors one look at avail.idx prefetches.
    @usableFromInline static let prefetchLimit = 32

    /// Starts loading the first descriptor of every chain published in `start..<end`: the driver
    /// on another CPU wrote them, so each would otherwise cost a cache miss in turn.
    @inlinable
    func prefetchDescriptors(from start: UInt16, to end: UInt16) {
        var position = start
        var count = 0
        while position != end && count < Self.prefetchLimit {
            let head = Int(queue.loadAvailableEntry(position))
            if head < queue.size { strata_prefetch(queue.descriptors + 16 * head) }
            position &+= 1
            count += 1
        }
    }

    /// Starts loading the first buffer of the chain at ring position `position` (a virtio-blk
    /// request's header), if published: its descriptor was prefetched when the batch was seen.
    @inlinable
    func prefetchFirstBuffer(at position: UInt16) {
        guard position != cachedAvailableIndex else { return }
        let head = queue.loadAvailableEntry(position)
        guard Int(head) < queue.size else { return }
        let first = queue.descriptor(at: head)
        guard !first.flags.contains(.indirect), let host = queue.memory.translate(address: first.address, length: 1) else { return }
        strata_prefetch(host)
    }

    /// The head `popAvail` would return, without consuming it.
    @inlinable
    public mutating func peekAvail() throws(VirtqueueError) -> UInt16? {
        guard try hasAvailable() else { return nil }
        return queue.loadAvailableEntry(lastAvailableIndex)
    }

    /// Consumes the head `peekAvail` returned.
    @inlinable
    public mutating func skipPeeked() {
        precondition(lastAvailableIndex != cachedAvailableIndex, "no peeked head to consume")
        lastAvailableIndex &+= 1
    }

    /// Whether the driver has published a chain not yet popped (one acquire load).
    @inlinable
    public mutating func hasAvailable() throws(VirtqueueError) -> Bool {
        if lastAvailableIndex != cachedAvailableIndex { return true }
        let published = queue.loadAvailableIndexAcquire()
        guard Int(published &- lastAvailableIndex) <= queue.size else { throw .availableIndexOverrun }
        cachedAvailableIndex = published
        if published == lastAvailableIndex { return false }
        prefetchDescriptors(from: lastAvailableIndex, to: published)
        prefetchFirstBuffer(at: lastAvailableIndex)
        return true
    }

    /// Asks the driver for a kick on the next chain it publishes (before the device sleeps), or
    /// tells it kicks are not needed (while the device is busy popping anyway). The caller checks
    /// `hasAvailable()` after enabling: a chain published before the driver saw the request came
    /// without a kick.
    @inlinable
    public func requestKicks(_ enabled: Bool) {
        if eventIndex {
            // With EVENT_IDX the driver kicks when it passes avail_event; while busy, leaving the
            // event behind means no kicks.
            if enabled { setAvailableEvent(lastAvailableIndex) }
        } else {
            suppressAvailableNotifications(!enabled)
        }
    }

    /// A validating walk over the chain that starts at `head`.
    @inlinable @inline(__always)
    public func chain(head: UInt16) -> DescriptorChain {
        DescriptorChain(queue: queue, head: head, maxIndirectEntries: UInt32(maxIndirectEntries))
    }

    /// Returns a chain: the element first, then a release store of used.idx so the driver that
    /// acquires the index sees the element and the bytes written into its buffers. `length` is
    /// the number of bytes written into the chain's device-writable buffers.
    @inlinable @inline(__always)
    public mutating func pushUsed(id: UInt16, length: UInt32) {
        assert(Int(id) < queue.size, "used element \(id) names no descriptor of a \(queue.size)-entry queue")
        queue.storeUsedElement(usedIndex, id: UInt32(id), length: length)
        usedIndex &+= 1
        if !defersUsedIndex { queue.storeUsedIndexRelease(usedIndex) }
    }

    /// Whether the driver must be notified about chains used since the last call: vring_need_event
    /// on used_event with EVENT_IDX, else unless avail flags say NO_INTERRUPT.
    @inlinable
    public mutating func needsNotification() -> Bool {
        if defersUsedIndex { queue.storeUsedIndexRelease(usedIndex) }
        SplitVirtqueue.storeLoadFence()  // used.idx must be visible before reading used_event
        let old = usedAtLastNotification
        let new = usedIndex
        usedAtLastNotification = new
        guard new != old else { return false }
        if eventIndex {
            return SplitVirtqueue.needsEvent(eventIndex: queue.loadUsedEvent(), newIndex: new, oldIndex: old)
        }
        return queue.loadAvailableFlags() & SplitVirtqueue.availableNoInterrupt == 0
    }

    /// EVENT_IDX: asks for a kick once the driver writes available entry `index`; usually
    /// `nextAvailableIndex`, before going idle. Fenced, so rechecking the available ring after it
    /// cannot miss an entry the driver added while it did not yet see the new event.
    @inlinable
    public func setAvailableEvent(_ index: UInt16) {
        queue.storeAvailableEvent(index)
        SplitVirtqueue.storeLoadFence()
    }

    /// Without EVENT_IDX: sets or clears VIRTQ_USED_F_NO_NOTIFY.
    @inlinable
    public func suppressAvailableNotifications(_ suppress: Bool) {
        queue.storeUsedFlags(suppress ? SplitVirtqueue.usedNoNotify : 0)
        SplitVirtqueue.storeLoadFence()
    }

    /// last_avail_idx: the available position the next `popAvail` reads.
    @inlinable public var nextAvailableIndex: UInt16 { lastAvailableIndex }

    /// used.idx as last written.
    @inlinable public var publishedUsedIndex: UInt16 { usedIndex }
}
