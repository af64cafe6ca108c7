import CStrataShim
import Synchronization

/// Where one split virtqueue (virtio 1.2 §2.7) lives in guest memory, and raw little-endian access
/// to its fields:
///
///     descriptor table  16 * N bytes, 16-aligned   struct virtq_desc[N]
///     available ring    6 + 2 * N,    2-aligned    le16 flags, idx, ring[N], used_event
///     used ring         6 + 8 * N,    4-aligned    le16 flags, idx, {le32 id, len}[N], avail_event
///
/// It keeps no indices of its own: `VirtqueueDriver` and `VirtqueueDevice` each keep their private
/// state and share only this memory, as a guest and a device do. Ring positions are free-running
/// 16-bit counters taken modulo N.
///
/// Why `@unchecked Sendable` is safe: the value is immutable geometry; the ring memory it points at
/// is shared with the other side by design and ordered by acquire/release on the two idx fields.
public struct SplitVirtqueue: @unchecked Sendable {
    public static let maxSize = 32768

    /// VIRTQ_AVAIL_F_NO_INTERRUPT in the available ring's flags.
    public static let availableNoInterrupt: UInt16 = 1
    /// VIRTQ_USED_F_NO_NOTIFY in the used ring's flags.
    public static let usedNoNotify: UInt16 = 1

    /// Guest addresses of the three parts for a queue of `size` entries placed contiguously.
    public struct Layout: Equatable, Sendable {
        public var descriptorTable: UInt64
        public var availableRing: UInt64
        public var usedRing: UInt64
        /// One past the last byte of the used ring.
        public var end: UInt64

        /// Places the parts back to back from `base`, padding each to its alignment. Nil for an
        /// invalid size or when the layout would run past 2^64.
        public init?(size: Int, at base: UInt64) {
            guard SplitVirtqueue.isValidSize(size) else { return nil }
            let n = UInt64(size)
            guard let table = Self.align(base, to: 16),
                  case (let avail, false) = table.addingReportingOverflow(16 * n),
                  case (let availEnd, false) = avail.addingReportingOverflow(6 + 2 * n),
                  let used = Self.align(availEnd, to: 4),
                  case (let end, false) = used.addingReportingOverflow(6 + 8 * n)
            else { return nil }
            descriptorTable = table
            availableRing = avail
            usedRing = used
            self.end = end
        }

        private static func align(_ address: UInt64, to alignment: UInt64) -> UInt64? {
            let (sum, overflow) = address.addingReportingOverflow(alignment - 1)
            return overflow ? nil : sum & ~(alignment - 1)
        }
    }

    public let memory: GuestMemory
    /// N: entries in the descriptor table and in each ring.
    public let size: Int
    public let descriptorTableAddress: UInt64
    public let availableRingAddress: UInt64
    public let usedRingAddress: UInt64

    @usableFromInline let mask: UInt16
    public let descriptors: UnsafeMutableRawPointer
    public let available: UnsafeMutableRawPointer
    public let used: UnsafeMutableRawPointer

    public static func isValidSize(_ size: Int) -> Bool {
        size >= 1 && size <= maxSize && size & (size - 1) == 0
    }

    /// A queue whose parts the driver placed at the given guest addresses (as vhost-user reports
    /// them). Checks size, alignment and that every part lies inside `memory`.
    public init(memory: GuestMemory, size: Int, descriptorTable: UInt64, availableRing: UInt64,
                usedRing: UInt64) throws(VirtqueueError) {
        guard Self.isValidSize(size) else { throw .invalidQueueSize }
        guard descriptorTable % 16 == 0, availableRing % 2 == 0, usedRing % 4 == 0 else { throw .misalignedRing }
        let n = UInt64(size)
        guard let table = memory.translate(address: descriptorTable, length: 16 * n),
              let avail = memory.translate(address: availableRing, length: 6 + 2 * n),
              let usedPart = memory.translate(address: usedRing, length: 6 + 8 * n)
        else { throw .addressOutOfBounds }
        self.memory = memory
        self.size = size
        self.descriptorTableAddress = descriptorTable
        self.availableRingAddress = availableRing
        self.usedRingAddress = usedRing
        self.mask = UInt16(size - 1)
        self.descriptors = table
        self.available = avail
        self.used = usedPart
    }

    /// A queue laid out contiguously from guest address `base` (see `Layout`).
    public init(memory: GuestMemory, size: Int, at base: UInt64) throws(VirtqueueError) {
        guard let layout = Layout(size: size, at: base) else {
            throw Self.isValidSize(size) ? .addressOutOfBounds : .invalidQueueSize
        }
        try self.init(memory: memory, size: size, descriptorTable: layout.descriptorTable,
                      availableRing: layout.availableRing, usedRing: layout.usedRing)
    }

    /// vring_need_event (virtio 1.2 §2.7.10, §2.7.13.4): whether moving an index from `old` to
    /// `new` passed `event`, i.e. the other side asked to be notified when the entry at `event`
    /// was written. All arithmetic is modulo 2^16, so it works across wrap-around.
    @inlinable @inline(__always)
    public static func needsEvent(eventIndex: UInt16, newIndex: UInt16, oldIndex: UInt16) -> Bool {
        newIndex &- eventIndex &- 1 < newIndex &- oldIndex
    }

    // MARK: Descriptor table

    @inlinable @inline(__always)
    public func descriptor(at index: UInt16) -> VirtqueueDescriptor {
        precondition(Int(index) < size, "descriptor index out of range")
        return VirtqueueDescriptor(loadingFrom: descriptors, index: Int(index))
    }

    @inlinable @inline(__always)
    public func storeDescriptor(_ descriptor: VirtqueueDescriptor, at index: UInt16) {
        precondition(Int(index) < size, "descriptor index out of range")
        descriptor.store(to: descriptors, index: Int(index))
    }

    // MARK: Available ring (driver writes, device reads)

    @inlinable @inline(__always)
    func loadAvailableFlags() -> UInt16 { UInt16(littleEndian: strata_load_acquire_u16(available)) }

    @inlinable @inline(__always)
    public func storeAvailableFlags(_ flags: UInt16) { strata_store_release_u16(available, flags.littleEndian) }

    /// Acquire: entries and descriptors written before the driver's release store are visible.
    @inlinable @inline(__always)
    func loadAvailableIndexAcquire() -> UInt16 { UInt16(littleEndian: strata_load_acquire_u16(available + 2)) }

    @inlinable @inline(__always)
    public func storeAvailableIndexRelease(_ index: UInt16) { strata_store_release_u16(available + 2, index.littleEndian) }

    @inlinable @inline(__always)
    func loadAvailableEntry(_ position: UInt16) -> UInt16 {
        UInt16(littleEndian: available.loadUnaligned(fromByteOffset: 4 + 2 * Int(position & mask), as: UInt16.self))
    }

    @inlinable @inline(__always)
    public func storeAvailableEntry(_ position: UInt16, head: UInt16) {
        available.storeBytes(of: head.littleEndian, toByteOffset: 4 + 2 * Int(position & mask), as: UInt16.self)
    }

    /// used_event: after ring[N].
    @inlinable @inline(__always)
    func loadUsedEvent() -> UInt16 { UInt16(littleEndian: strata_load_acquire_u16(available + 4 + 2 * size)) }

    @inlinable @inline(__always)
    public func storeUsedEvent(_ index: UInt16) { strata_store_release_u16(available + 4 + 2 * size, index.littleEndian) }

    // MARK: Used ring (device writes, driver reads)

    @inlinable @inline(__always)
    public func loadUsedFlags() -> UInt16 { UInt16(littleEndian: strata_load_acquire_u16(used)) }

    @inlinable @inline(__always)
    func storeUsedFlags(_ flags: UInt16) { strata_store_release_u16(used, flags.littleEndian) }

    /// Acquire: elements written before the device's release store are visible.
    @inlinable @inline(__always)
    public func loadUsedIndexAcquire() -> UInt16 { UInt16(littleEndian: strata_load_acquire_u16(used + 2)) }

    @inlinable @inline(__always)
    func storeUsedIndexRelease(_ index: UInt16) { strata_store_release_u16(used + 2, index.littleEndian) }

    @inlinable @inline(__always)
    public func loadUsedElement(_ position: UInt16) -> (id: UInt32, length: UInt32) {
        let element = used + 4 + 8 * Int(position & mask)
        return (UInt32(littleEndian: element.loadUnaligned(as: UInt32.self)),
                UInt32(littleEndian: element.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
    }

    @inlinable @inline(__always)
    func storeUsedElement(_ position: UInt16, id: UInt32, length: UInt32) {
        let element = used + 4 + 8 * Int(position & mask)
        element.storeBytes(of: id.littleEndian, as: UInt32.self)
        element.storeBytes(of: length.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    /// avail_event: after ring[N].
    @inlinable @inline(__always)
    public func loadAvailableEvent() -> UInt16 { UInt16(littleEndian: strata_load_acquire_u16(used + 4 + 8 * size)) }

    @inlinable @inline(__always)
    func storeAvailableEvent(_ index: UInt16) { strata_store_release_u16(used + 4 + 8 * size, index.littleEndian) }

    /// Orders this side's index store before its read of the other side's event field or flags
    /// (spec: "a suitable memory barrier"); a store-load ordering only a full fence gives.
    @inlinable @inline(__always)
    public static func storeLoadFence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}
