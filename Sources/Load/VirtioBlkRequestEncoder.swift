import StrataDevices

/// The driver's side of virtio-blk: builds request chains (header, optional data, status) for the
/// load generator and tests, as a guest driver would.
///
/// Header and status live in a preallocated slot area in guest memory, one 32-byte slot per
/// descriptor index: a chain's head is unique while it is in flight, so the head picks the slot
/// and encoding writes no memory but that slot and the chain's descriptors.
///
/// Why `@unchecked Sendable` is safe: the value is immutable; the slot memory it points at is
/// written only for a chain the caller's driver owns, and read back after the device returned it.
public struct VirtioBlkRequestEncoder: @unchecked Sendable {
    /// Header (16 bytes), status byte, padding to a power of two.
    public static let slotStride = 32

    /// Guest address of the slot area.
    public let slotArea: UInt64
    public let slotCount: Int
    @usableFromInline let slots: UnsafeMutableRawPointer

    /// Bytes of slot area a queue of `queueSize` entries needs.
    public static func slotAreaByteCount(queueSize: Int) -> Int { queueSize * slotStride }

    /// Slots for a queue of `queueSize` entries at guest address `slotArea`.
    public init(memory: GuestMemory, queueSize: Int, slotArea: UInt64) throws(VirtqueueError) {
        guard SplitVirtqueue.isValidSize(queueSize) else { throw .invalidQueueSize }
        guard let slots = memory.translate(address: slotArea,
                                           length: UInt64(Self.slotAreaByteCount(queueSize: queueSize)))
        else { throw .addressOutOfBounds }
        self.slotArea = slotArea
        self.slotCount = queueSize
        self.slots = slots
    }

    /// Allocates a chain from `driver` and writes a request into it: header from `type` and
    /// `sector`; a data descriptor for `dataLength` bytes at guest `dataAddress` when
    /// `dataLength > 0`, device-writable for reads and GET_ID; a status descriptor. Returns the
    /// head for `publish`, or nil when too few descriptors are free. The status byte starts as
    /// 0xFF, so a request the device never answered is visible.
    @inlinable
    public func encode(into driver: inout VirtqueueDriver, type: VirtioBlkRequestType, sector: UInt64,
                       dataAddress: UInt64, dataLength: UInt32) -> UInt16? {
        guard let head = driver.allocateChain(length: dataLength > 0 ? 3 : 2) else { return nil }
        write(head: head, into: driver, type: type, sector: sector, dataAddress: dataAddress, dataLength: dataLength)
        return head
    }

    /// Writes a request into the chain at `head`, which `driver` allocated with 3 descriptors
    /// (2 when `dataLength` is 0); what `encode` does after allocating.
    @inlinable
    public func write(head: UInt16, into driver: borrowing VirtqueueDriver, type: VirtioBlkRequestType, sector: UInt64,
                      dataAddress: UInt64, dataLength: UInt32) {
        precondition(driver.queue.size <= slotCount, "slot area smaller than the queue")
        let hasData = dataLength > 0
        let slot = slots + Int(head) * Self.slotStride
        slot.storeBytes(of: type.rawValue.littleEndian, as: UInt32.self)
        slot.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        slot.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        slot.storeBytes(of: UInt8(0xFF), toByteOffset: VirtioBlk.headerSize, as: UInt8.self)
        let headerAddress = slotArea + UInt64(Int(head) * Self.slotStride)

        driver.writeDescriptor(head, address: headerAddress, length: UInt32(VirtioBlk.headerSize), flags: .next)
        var statusIndex = driver.nextIndex(after: head)
        if hasData {
            let writable = type.dataIsDeviceWritable ?? false
            driver.writeDescriptor(statusIndex, address: dataAddress, length: dataLength,
                                   flags: writable ? [.next, .write] : .next)
            statusIndex = driver.nextIndex(after: statusIndex)
        }
        driver.writeDescriptor(statusIndex, address: headerAddress + UInt64(VirtioBlk.headerSize), length: 1,
                               flags: .write)
    }

    /// The status byte of the request encoded at `head`, once the device returned it.
    @inlinable
    public func status(head: UInt16) -> UInt8 {
        precondition(Int(head) < slotCount, "head out of range")
        return slots.load(fromByteOffset: Int(head) * Self.slotStride + VirtioBlk.headerSize, as: UInt8.self)
    }
}
