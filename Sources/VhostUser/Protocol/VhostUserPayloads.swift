/// struct vhost_vring_state: a ring index and a number (size, base, or enable).
public struct VhostUserVringState: Equatable, Sendable {
    public static let byteCount = 8
    public var index: UInt32
    public var number: UInt32

    public init(index: UInt32, number: UInt32) {
        self.index = index
        self.number = number
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        VhostUserWire.store32(index, bytes, at: 0)
        VhostUserWire.store32(number, bytes, at: 4)
    }

    static func parse(_ bytes: UnsafeRawBufferPointer) -> Self {
        Self(index: VhostUserWire.load32(bytes, at: 0), number: VhostUserWire.load32(bytes, at: 4))
    }
}

/// struct vhost_vring_addr: where a ring's three parts are, as addresses in the front end's own
/// address space (the `userAddress` of a memory region), not guest-physical ones.
public struct VhostUserVringAddress: Equatable, Sendable {
    public static let byteCount = 40
    /// VHOST_VRING_F_LOG: log used-ring writes (migration); not offered here.
    public static let logFlag: UInt32 = 1

    public var index: UInt32
    public var flags: UInt32
    public var descriptorTable: UInt64
    public var usedRing: UInt64
    public var availableRing: UInt64
    public var log: UInt64

    public init(index: UInt32, flags: UInt32 = 0, descriptorTable: UInt64, usedRing: UInt64, availableRing: UInt64, log: UInt64 = 0) {
        self.index = index
        self.flags = flags
        self.descriptorTable = descriptorTable
        self.usedRing = usedRing
        self.availableRing = availableRing
        self.log = log
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        VhostUserWire.store32(index, bytes, at: 0)
        VhostUserWire.store32(flags, bytes, at: 4)
        VhostUserWire.store64(descriptorTable, bytes, at: 8)
        VhostUserWire.store64(usedRing, bytes, at: 16)
        VhostUserWire.store64(availableRing, bytes, at: 24)
        VhostUserWire.store64(log, bytes, at: 32)
    }

    static func parse(_ bytes: UnsafeRawBufferPointer) -> Self {
        Self(index: VhostUserWire.load32(bytes, at: 0), flags: VhostUserWire.load32(bytes, at: 4),
             descriptorTable: VhostUserWire.load64(bytes, at: 8), usedRing: VhostUserWire.load64(bytes, at: 16),
             availableRing: VhostUserWire.load64(bytes, at: 24), log: VhostUserWire.load64(bytes, at: 32))
    }
}

/// One region of guest memory: its guest-physical range, where the front end has it mapped, and
/// the offset into the file descriptor that comes with it.
public struct VhostUserMemoryRegion: Equatable, Sendable {
    public static let byteCount = 32
    public var guestAddress: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer, at offset: Int = 0) {
        VhostUserWire.store64(guestAddress, bytes, at: offset)
        VhostUserWire.store64(size, bytes, at: offset + 8)
        VhostUserWire.store64(userAddress, bytes, at: offset + 16)
        VhostUserWire.store64(mmapOffset, bytes, at: offset + 24)
    }

    static func parse(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Self {
        Self(guestAddress: VhostUserWire.load64(bytes, at: offset), size: VhostUserWire.load64(bytes, at: offset + 8),
             userAddress: VhostUserWire.load64(bytes, at: offset + 16), mmapOffset: VhostUserWire.load64(bytes, at: offset + 24))
    }

    /// Whether the region is usable at all: non-empty, no range wrapping past 2^64.
    var isWellFormed: Bool {
        size > 0 && guestAddress <= UInt64.max - (size - 1) && userAddress <= UInt64.max - (size - 1)
            && mmapOffset <= UInt64.max - size
    }
}

/// struct VhostUserInflight: the shared region that records which descriptors are in flight, so a
/// restarted back end can resubmit them.
public struct VhostUserInflight: Equatable, Sendable {
    /// Three u64-aligned fields and two u16s; C pads the struct to 24 bytes.
    public static let byteCount = 24
    public var mmapSize: UInt64
    public var mmapOffset: UInt64
    public var queueCount: UInt16
    public var queueSize: UInt16

    public init(mmapSize: UInt64, mmapOffset: UInt64, queueCount: UInt16, queueSize: UInt16) {
        self.mmapSize = mmapSize
        self.mmapOffset = mmapOffset
        self.queueCount = queueCount
        self.queueSize = queueSize
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        VhostUserWire.store64(mmapSize, bytes, at: 0)
        VhostUserWire.store64(mmapOffset, bytes, at: 8)
        VhostUserWire.store16(queueCount, bytes, at: 16)
        VhostUserWire.store16(queueSize, bytes, at: 18)
        VhostUserWire.store32(0, bytes, at: 20)
    }

    static func parse(_ bytes: UnsafeRawBufferPointer) -> Self {
        Self(mmapSize: VhostUserWire.load64(bytes, at: 0), mmapOffset: VhostUserWire.load64(bytes, at: 8),
             queueCount: VhostUserWire.load16(bytes, at: 16), queueSize: VhostUserWire.load16(bytes, at: 18))
    }
}
