/// Where a guest cluster's data lives, decoded from its L2 entry (docs/interop/qcow2.rst,
/// "Cluster mapping"), with QEMU's reading of the bits (qcow2_get_cluster_type).
public enum Qcow2ClusterMapping: Equatable {
    /// Not in this image: the backing file's data, or zeros without one.
    case unallocated
    /// Reads as zeros (the zero flag, with or without a preallocated host cluster).
    case zero
    /// Uncompressed data at this cluster-aligned host offset.
    case normal(hostOffset: UInt64)
    /// Deflate data of at most `compressedBytes` bytes from `hostOffset` (not aligned).
    case compressed(hostOffset: UInt64, compressedBytes: Int)
    /// A host offset that is not cluster-aligned: QEMU marks such an image corrupt.
    case corrupt

    /// Bits 9-55 of standard L1 and L2 entries.
    public static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    public static let compressedFlag: UInt64 = 1 << 62
    public static let copiedFlag: UInt64 = 1 << 63
    public static let zeroFlag: UInt64 = 1 << 0

    /// An extended L2 entry's first word with its reserved bit 0 dropped (subclusters carry zeros
    /// in the bitmap). A compressed entry keeps it: there it is part of the byte offset.
    @inline(__always) public static func extendedEntry(_ word: UInt64) -> UInt64 {
        word & compressedFlag != 0 ? word : word & ~zeroFlag
    }

    /// `dataFile`: the image keeps its data in an external data file, where host offset 0 is a
    /// real cluster when the entry says COPIED (QEMU's qcow2_get_cluster_type).
    init(l2Entry entry: UInt64, clusterBits: UInt32, dataFile: Bool = false) {
        if entry & Self.compressedFlag != 0 {
            // x = 62 - (cluster_bits - 8): the offset takes bits 0..x-1, the count of additional
            // 512-byte sectors bits x..61.
            let sizeShift = 62 - UInt64(clusterBits - 8)
            let sizeMask = (UInt64(1) << UInt64(clusterBits - 8)) - 1
            let offset = entry & ((UInt64(1) << sizeShift) - 1)
            let sectors = ((entry >> sizeShift) & sizeMask) + 1
            self = .compressed(hostOffset: offset, compressedBytes: Int(sectors * 512 - (offset & 511)))
        } else if entry & Self.zeroFlag != 0 {
            self = .zero
        } else {
            let offset = entry & Self.offsetMask
            if offset == 0 {
                self = dataFile && entry & Self.copiedFlag != 0 ? .normal(hostOffset: 0) : .unallocated
            } else if offset & ((UInt64(1) << UInt64(clusterBits)) - 1) != 0 {
                self = .corrupt
            } else {
                self = .normal(hostOffset: offset)
            }
        }
    }
}
