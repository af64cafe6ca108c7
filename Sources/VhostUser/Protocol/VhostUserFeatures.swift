/// Virtio feature bits a vhost-user back end offers with GET_FEATURES (virtio 1.2 §6, §5.2.3, and
/// vhost-user.rst's VHOST_USER_F_PROTOCOL_FEATURES).
public struct VirtioFeatures: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let blockSizeMax = Self(rawValue: 1 << 1)
    public static let blockSegmentMax = Self(rawValue: 1 << 2)
    public static let blockReadOnly = Self(rawValue: 1 << 5)
    public static let blockSize = Self(rawValue: 1 << 6)
    public static let blockFlush = Self(rawValue: 1 << 9)
    public static let blockTopology = Self(rawValue: 1 << 10)
    public static let blockConfigWCE = Self(rawValue: 1 << 11)
    public static let blockMultiQueue = Self(rawValue: 1 << 12)
    public static let blockDiscard = Self(rawValue: 1 << 13)
    public static let blockWriteZeroes = Self(rawValue: 1 << 14)
    public static let ringIndirectDescriptors = Self(rawValue: 1 << 28)
    public static let ringEventIndex = Self(rawValue: 1 << 29)
    /// VHOST_USER_F_PROTOCOL_FEATURES: GET/SET_PROTOCOL_FEATURES exist, and rings start disabled
    /// until SET_VRING_ENABLE.
    public static let protocolFeatures = Self(rawValue: 1 << 30)
    public static let version1 = Self(rawValue: 1 << 32)
}

/// vhost-user protocol feature bits (GET/SET_PROTOCOL_FEATURES).
public struct VhostUserProtocolFeatures: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let multiQueue = Self(rawValue: 1 << 0)
    public static let logSharedMemory = Self(rawValue: 1 << 1)
    public static let replyAck = Self(rawValue: 1 << 3)
    public static let backendRequests = Self(rawValue: 1 << 5)
    public static let config = Self(rawValue: 1 << 9)
    public static let inflightSharedMemory = Self(rawValue: 1 << 12)
    public static let resetDevice = Self(rawValue: 1 << 13)
    public static let configureMemorySlots = Self(rawValue: 1 << 15)
    public static let status = Self(rawValue: 1 << 16)
}
