/// virtio-blk wire constants (virtio 1.2 §5.2.6). A request is a chain of
///
///     struct virtio_blk_req { le32 type; le32 reserved; le64 sector; u8 data[]; u8 status; }
///
/// with the header device-readable and the status byte device-writable.
public enum VirtioBlk {
    public static let sectorSize = 512
    /// type, reserved, sector.
    public static let headerSize = 16
    /// VIRTIO_BLK_T_GET_ID answers a NUL-padded ASCII string of at most this many bytes.
    public static let deviceIDLength = 20
    /// struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags.
    public static let rangeSize = 16
    /// Bit 0 of a range's flags: write-zeroes may deallocate. Other bits are reserved.
    public static let rangeUnmapFlag: UInt32 = 1
}

/// The request type field. A struct rather than an enum: unknown values arrive from the guest and
/// must be answered with VIRTIO_BLK_S_UNSUPP, not rejected at decoding. Constants are computed so
/// code inlined into other modules folds them.
public struct VirtioBlkRequestType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// VIRTIO_BLK_T_IN: the device writes sectors into the data buffers.
    @inlinable public static var read: VirtioBlkRequestType { VirtioBlkRequestType(rawValue: 0) }
    /// VIRTIO_BLK_T_OUT: the device writes the data buffers to the sectors.
    @inlinable public static var write: VirtioBlkRequestType { VirtioBlkRequestType(rawValue: 1) }
    /// VIRTIO_BLK_T_FLUSH.
    @inlinable public static var flush: VirtioBlkRequestType { VirtioBlkRequestType(rawValue: 4) }
    /// VIRTIO_BLK_T_GET_ID.
    @inlinable public static var getID: VirtioBlkRequestType { VirtioBlkRequestType(rawValue: 8) }
    /// VIRTIO_BLK_T_DISCARD: data is range segments.
    @inlinable public static var discard: VirtioBlkRequestType { VirtioBlkRequestType(rawValue: 11) }
    /// VIRTIO_BLK_T_WRITE_ZEROES: data is range segments.
    @inlinable public static var writeZeroes: VirtioBlkRequestType { VirtioBlkRequestType(rawValue: 13) }

    /// Whether the data buffers of this type are device-writable; nil when the type carries no data
    /// the device looks at (flush, unknown types).
    @inlinable public var dataIsDeviceWritable: Bool? {
        switch rawValue {
        case Self.read.rawValue, Self.getID.rawValue: true
        case Self.write.rawValue, Self.discard.rawValue, Self.writeZeroes.rawValue: false
        default: nil
        }
    }
}

/// The status byte the device writes last.
public enum VirtioBlkStatus: UInt8, Sendable {
    case ok = 0
    case ioError = 1
    case unsupported = 2
}
