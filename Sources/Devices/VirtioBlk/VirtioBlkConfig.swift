/// The virtio-blk device configuration space (virtio 1.2 §5.2.4, struct virtio_blk_config): what
/// the driver reads to size the disk and learn its limits, and the one byte it may write
/// (`writeback`, with VIRTIO_BLK_F_CONFIG_WCE).
public struct VirtioBlkConfig: Equatable, Sendable {
    /// Up to and including write_zeroes_may_unmap and its padding.
    public static let byteCount = 60
    /// Offset of the writeback byte, the only field a driver writes.
    public static let writebackOffset = 32
    /// QEMU's VIRTIO_BLK_MAX_DISCARD_SECTORS and VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS.
    public static let maxDiscardSectors: UInt32 = 32768

    /// In 512-byte sectors, whatever the logical block size.
    public var capacitySectors: UInt64
    public var segmentMax: UInt32
    public var logicalBlockSize: UInt32
    /// Writeback (1) or writethrough (0).
    public var writeback: UInt8 = 1
    public var queueCount: UInt16

    public init(capacitySectors: UInt64, segmentMax: UInt32, logicalBlockSize: UInt32, queueCount: UInt16) {
        self.capacitySectors = capacitySectors
        self.segmentMax = segmentMax
        self.logicalBlockSize = logicalBlockSize
        self.queueCount = queueCount
    }

    /// The space as the driver reads it, little-endian.
    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.byteCount)
        bytes.withUnsafeMutableBytes { raw in
            func put<T: FixedWidthInteger>(_ value: T, at offset: Int) { raw.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
            put(capacitySectors, at: 0)
            put(UInt32(0), at: 8)  // size_max: not offered
            put(segmentMax, at: 12)
            // geometry (16-19): not offered
            put(logicalBlockSize, at: 20)
            // topology: physical_block_exp 0, alignment_offset 0, min_io_size 1 and opt_io_size 1 (in blocks)
            put(UInt16(1), at: 26)
            put(UInt32(1), at: 28)
            put(writeback, at: Self.writebackOffset)
            put(queueCount, at: 34)
            put(Self.maxDiscardSectors, at: 36)
            put(UInt32(1), at: 40)  // max_discard_seg
            put(logicalBlockSize / UInt32(VirtioBlk.sectorSize), at: 44)  // discard_sector_alignment
            put(Self.maxDiscardSectors, at: 48)  // max_write_zeroes_sectors
            put(UInt32(1), at: 52)  // max_write_zeroes_seg
            put(UInt8(1), at: 56)  // write_zeroes_may_unmap
        }
        return bytes
    }
}
