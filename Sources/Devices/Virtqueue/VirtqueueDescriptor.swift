/// One entry of a split virtqueue descriptor table (virtio 1.2 §2.7.5, `struct virtq_desc`):
/// le64 addr, le32 len, le16 flags, le16 next; 16 bytes. Decoded into a value once, so a
/// descriptor the other side rewrites meanwhile cannot change what was validated.
public struct VirtqueueDescriptor: Equatable, Sendable {
    /// Constants are computed so code inlined into other modules folds them instead of calling a
    /// global's accessor.
    public struct Flags: OptionSet, Sendable {
        public let rawValue: UInt16
        @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

        /// VIRTQ_DESC_F_NEXT: the chain continues at `next`.
        @inlinable public static var next: Flags { Flags(rawValue: 1) }
        /// VIRTQ_DESC_F_WRITE: the buffer is device-writable (otherwise device-readable).
        @inlinable public static var write: Flags { Flags(rawValue: 2) }
        /// VIRTQ_DESC_F_INDIRECT: the buffer is a table of descriptors.
        @inlinable public static var indirect: Flags { Flags(rawValue: 4) }
    }

    public static let byteCount = 16

    public var address: UInt64
    public var length: UInt32
    public var flags: Flags
    public var next: UInt16

    @inlinable
    public init(address: UInt64, length: UInt32, flags: Flags = [], next: UInt16 = 0) {
        self.address = address
        self.length = length
        self.flags = flags
        self.next = next
    }

    /// Reads entry `index` of the table at `table`; the caller has bounds-checked `index`.
    @inlinable @inline(__always)
    public init(loadingFrom table: UnsafeRawPointer, index: Int) {
        let entry = table + index &* Self.byteCount
        address = UInt64(littleEndian: entry.loadUnaligned(as: UInt64.self))
        length = UInt32(littleEndian: entry.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        flags = Flags(rawValue: UInt16(littleEndian: entry.loadUnaligned(fromByteOffset: 12, as: UInt16.self)))
        next = UInt16(littleEndian: entry.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
    }

    /// Writes this descriptor as entry `index` of the table at `table` (a queue's own table or an
    /// indirect one).
    @inlinable @inline(__always)
    public func store(to table: UnsafeMutableRawPointer, index: Int) {
        let entry = table + index &* Self.byteCount
        entry.storeBytes(of: address.littleEndian, as: UInt64.self)
        entry.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        entry.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
        entry.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }
}
