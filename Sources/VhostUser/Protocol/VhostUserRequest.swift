/// A front-end request code (vhost-user.rst, "Front-end message types"). A struct, not an enum:
/// codes this back end does not know arrive from the front end and must be refused with an error,
/// not trapped on at decoding.
public struct VhostUserRequest: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let getFeatures = Self(rawValue: 1)
    public static let setFeatures = Self(rawValue: 2)
    public static let setOwner = Self(rawValue: 3)
    public static let resetOwner = Self(rawValue: 4)
    public static let setMemTable = Self(rawValue: 5)
    public static let setLogBase = Self(rawValue: 6)
    public static let setLogFD = Self(rawValue: 7)
    public static let setVringNum = Self(rawValue: 8)
    public static let setVringAddr = Self(rawValue: 9)
    public static let setVringBase = Self(rawValue: 10)
    public static let getVringBase = Self(rawValue: 11)
    public static let setVringKick = Self(rawValue: 12)
    public static let setVringCall = Self(rawValue: 13)
    public static let setVringErr = Self(rawValue: 14)
    public static let getProtocolFeatures = Self(rawValue: 15)
    public static let setProtocolFeatures = Self(rawValue: 16)
    public static let getQueueNum = Self(rawValue: 17)
    public static let setVringEnable = Self(rawValue: 18)
    public static let setBackendRequestFD = Self(rawValue: 21)
    public static let setVringEndian = Self(rawValue: 23)
    public static let getConfig = Self(rawValue: 24)
    public static let setConfig = Self(rawValue: 25)
    public static let getInflightFD = Self(rawValue: 31)
    public static let setInflightFD = Self(rawValue: 32)
    public static let resetDevice = Self(rawValue: 34)
    public static let getMaxMemSlots = Self(rawValue: 36)
    public static let addMemReg = Self(rawValue: 37)
    public static let remMemReg = Self(rawValue: 38)
    public static let setStatus = Self(rawValue: 39)
    public static let getStatus = Self(rawValue: 40)

    static let names: [UInt32: String] = [
        1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE", 6: "SET_LOG_BASE",
        7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
        12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR", 15: "GET_PROTOCOL_FEATURES",
        16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
        21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG", 25: "SET_CONFIG",
        26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION", 28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN",
        30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD", 33: "GPU_SET_SOCKET", 34: "RESET_DEVICE",
        35: "VRING_KICK", 36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS", 40: "GET_STATUS",
    ]

    public var description: String { Self.names[rawValue].map { "VHOST_USER_\($0)" } ?? "vhost-user request \(rawValue)" }
}
