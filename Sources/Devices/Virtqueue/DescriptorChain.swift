import StrataGraph

/// The device's walk over one descriptor chain, validating every step against a hostile driver
/// (virtio 1.2 §2.7.5): indices stay inside their table, a chain may not be longer than its table
/// (which is how loops are caught without remembering visited entries), every buffer translates
/// into guest memory, and the chain's bytes add up to less than 2^32. A chain is zero or more
/// direct descriptors, optionally ending in one VIRTQ_DESC_F_INDIRECT descriptor whose table holds
/// the rest; indirect tables may not nest.
///
/// Each descriptor is read once into a value, so a driver rewriting the table concurrently can
/// change what the walk sees next but never what it already validated. A trivially copyable value:
/// no allocation, no reference counting.
public struct DescriptorChain {
    /// One validated buffer of the chain.
    public struct Segment {
        /// Host view of the buffer; its base is non-nil even when it is empty.
        public let buffer: IOBuffer
        public let isDeviceWritable: Bool

        @inlinable init(buffer: IOBuffer, isDeviceWritable: Bool) {
            self.buffer = buffer
            self.isDeviceWritable = isDeviceWritable
        }
    }

    /// The chain's head: the id the device returns in the used ring.
    public let head: UInt16

    @usableFromInline let memory: GuestMemory
    @usableFromInline let maxIndirectEntries: UInt32
    /// The table being walked: the queue's, then possibly one indirect table.
    @usableFromInline var table: UnsafeRawPointer
    @usableFromInline var tableEntries: UInt32
    @usableFromInline var isIndirect: Bool
    /// Index in `table` of the next descriptor; `finished` once the chain ended or failed.
    @usableFromInline var nextIndex: UInt32
    /// Descriptors taken from `table`; more than `tableEntries` means a loop.
    @usableFromInline var steps: UInt32
    @usableFromInline var bytes: UInt64

    @usableFromInline static var finished: UInt32 { UInt32.max }

    @inlinable
    init(queue: SplitVirtqueue, head: UInt16, maxIndirectEntries: UInt32) {
        self.head = head
        self.memory = queue.memory
        self.maxIndirectEntries = maxIndirectEntries
        self.table = UnsafeRawPointer(queue.descriptors)
        self.tableEntries = UInt32(queue.size)
        self.isIndirect = false
        self.nextIndex = UInt32(head)
        self.steps = 0
        self.bytes = 0
    }

    /// Total bytes of the buffers returned so far.
    @inlinable public var totalLength: UInt64 { bytes }

    /// The next buffer, nil after the last one. After an error the walk is over and returns nil.
    @inlinable
    public mutating func next() throws(VirtqueueError) -> Segment? {
        while nextIndex != Self.finished {
            let index = nextIndex
            nextIndex = Self.finished  // any throw below ends the walk
            guard index < tableEntries else { throw .descriptorIndexOutOfRange }
            steps &+= 1
            guard steps <= tableEntries else { throw .descriptorLoop }
            let descriptor = VirtqueueDescriptor(loadingFrom: table, index: Int(index))

            if descriptor.flags.contains(.indirect) {
                guard !isIndirect else { throw .nestedIndirect }
                // The indirect descriptor must end the direct chain; its WRITE flag is ignored (spec).
                guard !descriptor.flags.contains(.next) else { throw .badIndirectTable }
                let length = descriptor.length
                let entries = length / UInt32(VirtqueueDescriptor.byteCount)
                guard length > 0, length % UInt32(VirtqueueDescriptor.byteCount) == 0,
                      entries <= maxIndirectEntries
                else { throw .badIndirectTable }
                guard let indirectTable = memory.translate(address: descriptor.address, length: UInt64(length)) else {
                    throw .addressOutOfBounds
                }
                table = UnsafeRawPointer(indirectTable)
                tableEntries = entries
                isIndirect = true
                steps = 0
                nextIndex = 0
                continue
            }

            guard let base = memory.translate(address: descriptor.address, length: UInt64(descriptor.length)) else {
                throw .addressOutOfBounds
            }
            bytes &+= UInt64(descriptor.length)  // checked every step, so it stays below 2^33
            guard bytes <= UInt64(UInt32.max) else { throw .chainLengthOverflow }
            if descriptor.flags.contains(.next) { nextIndex = UInt32(descriptor.next) }
            return Segment(buffer: IOBuffer(base: base, count: Int(descriptor.length)),
                           isDeviceWritable: descriptor.flags.contains(.write))
        }
        return nil
    }
}
