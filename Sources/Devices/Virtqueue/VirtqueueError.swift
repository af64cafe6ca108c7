/// What is wrong with a virtqueue's setup or with what the other side put into it. Descriptor
/// contents come from an untrusted driver: every one of these is a reachable input, never a trap.
/// A plain enum so typed throws carry it without allocating.
public enum VirtqueueError: Error, Equatable, Sendable {
    /// Queue size is not a power of two in 1...32768.
    case invalidQueueSize
    /// A ring part is not at the alignment the spec requires (16, 2, 4 bytes).
    case misalignedRing
    /// A head or `next` index is not below the size of its descriptor table.
    case descriptorIndexOutOfRange
    /// The chain is longer than its table, so it revisits a descriptor.
    case descriptorLoop
    /// A buffer (address, length) is not entirely inside guest memory, including when
    /// address + length overflows 64 bits.
    case addressOutOfBounds
    /// The buffers of one chain add up to more than 2^32 - 1 bytes (the spec's limit; the used
    /// ring's length field could not report more).
    case chainLengthOverflow
    /// An indirect descriptor whose table is empty, not a multiple of 16 bytes, larger than the
    /// device accepts, or which also has VIRTQ_DESC_F_NEXT.
    case badIndirectTable
    /// An indirect descriptor inside an indirect table.
    case nestedIndirect
    /// The available index ran more than a queue size ahead of what the device consumed.
    case availableIndexOverrun
}
