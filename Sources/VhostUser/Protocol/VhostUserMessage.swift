/// A front-end message, decoded and checked against its request's payload layout and the number of
/// file descriptors that came with it. Decoding reads the payload once; nothing the message names
/// (ring indices, regions, config offsets) is checked against the device here: the connection does
/// that, since only it knows the device.
public enum VhostUserMessage: Equatable, Sendable {
    case getFeatures
    case setFeatures(UInt64)
    case setOwner
    case resetOwner
    /// The regions, in order; the n-th region's memory is the n-th descriptor that came with it.
    case setMemTable([VhostUserMemoryRegion])
    case setVringNum(VhostUserVringState)
    case setVringAddress(VhostUserVringAddress)
    case setVringBase(VhostUserVringState)
    case getVringBase(index: UInt32)
    /// `hasDescriptor` false: VHOST_USER_VRING_NOFD_MASK was set, the ring is to be polled.
    case setVringKick(index: UInt32, hasDescriptor: Bool)
    case setVringCall(index: UInt32, hasDescriptor: Bool)
    case setVringError(index: UInt32, hasDescriptor: Bool)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case getQueueNum
    case setVringEnable(VhostUserVringState)
    case getConfig(offset: UInt32, size: UInt32, flags: UInt32)
    case setConfig(offset: UInt32, flags: UInt32, bytes: [UInt8])
    case getInflightFD(VhostUserInflight)
    case setInflightFD(VhostUserInflight)
    case setBackendRequestFD
    case resetDevice
    case getMaxMemSlots
    case addMemoryRegion(VhostUserMemoryRegion)
    case removeMemoryRegion(VhostUserMemoryRegion)
    case setStatus(UInt8)
    case getStatus
    /// A request this back end does not implement (logging, migration, IOTLB, ...): answered with
    /// an error where the front end waits for one, never acted on.
    case unsupported(VhostUserRequest)

    /// The most regions one SET_MEM_TABLE carries (VHOST_MEMORY_BASELINE_NREGIONS).
    public static let maxRegions = 8
    /// The virtio-blk config space is 60 bytes today; the message may ask for at most 256.
    public static let maxConfigBytes = 256
    /// Bits 0-7 of a kick/call/err payload are the ring index; bit 8 says no descriptor came.
    static let vringIndexMask: UInt64 = 0xff
    static let noDescriptorFlag: UInt64 = 0x100

    /// How many file descriptors must come with a message of this kind (after decoding it).
    public var expectedDescriptors: Int {
        switch self {
        case .setMemTable(let regions): regions.count
        case .setVringKick(_, let has), .setVringCall(_, let has), .setVringError(_, let has): has ? 1 : 0
        case .setInflightFD, .setBackendRequestFD, .addMemoryRegion: 1
        default: 0
        }
    }

    /// Decodes `payload` (exactly `header.size` bytes) for `header.request`, which arrived with
    /// `descriptorCount` descriptors.
    public static func parse(_ header: VhostUserHeader, payload: UnsafeRawBufferPointer,
                             descriptorCount: Int) throws(VhostUserProtocolError) -> VhostUserMessage {
        precondition(payload.count == Int(header.size), "the payload is exactly what the header announced")
        let request = header.request
        func sizeError(_ expected: String) -> VhostUserProtocolError {
            VhostUserProtocolError("\(request): payload of \(payload.count) bytes, expected \(expected)")
        }
        func size(is expected: Int) throws(VhostUserProtocolError) {
            guard payload.count == expected else { throw sizeError("\(expected)") }
        }
        func u64() throws(VhostUserProtocolError) -> UInt64 {
            try size(is: 8)
            return VhostUserWire.load64(payload, at: 0)
        }
        func vringFD() throws(VhostUserProtocolError) -> (UInt32, Bool) {
            let value = try u64()
            guard value & ~(vringIndexMask | noDescriptorFlag) == 0 else {
                throw VhostUserProtocolError("\(request): unknown bits in 0x\(String(value, radix: 16))")
            }
            return (UInt32(value & vringIndexMask), value & noDescriptorFlag == 0)
        }
        func state() throws(VhostUserProtocolError) -> VhostUserVringState {
            try size(is: VhostUserVringState.byteCount)
            return .parse(payload)
        }

        let message: VhostUserMessage
        switch request {
        case .getFeatures: try size(is: 0); message = .getFeatures
        case .setFeatures: message = .setFeatures(try u64())
        // QEMU sends these two without a payload; older front ends sent a u64. Both are fine.
        case .setOwner, .resetOwner:
            guard payload.count == 0 || payload.count == 8 else { throw sizeError("0 or 8") }
            message = request == .setOwner ? .setOwner : .resetOwner
        case .setMemTable:
            guard payload.count >= 8 else { throw sizeError("at least 8") }
            let count = Int(VhostUserWire.load32(payload, at: 0))
            guard count >= 1, count <= maxRegions else {
                throw VhostUserProtocolError("\(request): \(count) regions, expected 1 to \(maxRegions)")
            }
            try size(is: 8 + count * VhostUserMemoryRegion.byteCount)
            var regions: [VhostUserMemoryRegion] = []
            for index in 0..<count {
                let region = VhostUserMemoryRegion.parse(payload, at: 8 + index * VhostUserMemoryRegion.byteCount)
                guard region.isWellFormed else { throw VhostUserProtocolError("\(request): region \(index) is empty or wraps past 2^64") }
                regions.append(region)
            }
            message = .setMemTable(regions)
        case .setVringNum: message = .setVringNum(try state())
        case .setVringAddr:
            try size(is: VhostUserVringAddress.byteCount)
            message = .setVringAddress(.parse(payload))
        case .setVringBase: message = .setVringBase(try state())
        case .getVringBase: message = .getVringBase(index: try state().index)
        case .setVringKick: let (index, has) = try vringFD(); message = .setVringKick(index: index, hasDescriptor: has)
        case .setVringCall: let (index, has) = try vringFD(); message = .setVringCall(index: index, hasDescriptor: has)
        case .setVringErr: let (index, has) = try vringFD(); message = .setVringError(index: index, hasDescriptor: has)
        case .getProtocolFeatures: try size(is: 0); message = .getProtocolFeatures
        case .setProtocolFeatures: message = .setProtocolFeatures(try u64())
        case .getQueueNum: try size(is: 0); message = .getQueueNum
        case .setVringEnable: message = .setVringEnable(try state())
        case .getConfig, .setConfig:
            guard payload.count >= 12 else { throw sizeError("at least 12") }
            let offset = VhostUserWire.load32(payload, at: 0)
            let length = VhostUserWire.load32(payload, at: 4)
            let flags = VhostUserWire.load32(payload, at: 8)
            guard length <= UInt32(maxConfigBytes) else {
                throw VhostUserProtocolError("\(request): \(length) config bytes, at most \(maxConfigBytes)")
            }
            try size(is: 12 + Int(length))
            if request == .getConfig {
                message = .getConfig(offset: offset, size: length, flags: flags)
            } else {
                message = .setConfig(offset: offset, flags: flags, bytes: Array(UnsafeRawBufferPointer(rebasing: payload[12...])))
            }
        case .getInflightFD, .setInflightFD:
            // 20 bytes of fields; C front ends send the padded 24.
            guard payload.count == 20 || payload.count == VhostUserInflight.byteCount else { throw sizeError("20 or 24") }
            var padded: (UInt64, UInt64, UInt64) = (0, 0, 0)
            withUnsafeMutableBytes(of: &padded) { $0.copyMemory(from: payload) }
            let inflight = withUnsafeBytes(of: &padded) { VhostUserInflight.parse($0) }
            message = request == .getInflightFD ? .getInflightFD(inflight) : .setInflightFD(inflight)
        case .setBackendRequestFD: try size(is: 0); message = .setBackendRequestFD
        case .resetDevice: try size(is: 0); message = .resetDevice
        case .getMaxMemSlots: try size(is: 0); message = .getMaxMemSlots
        case .addMemReg, .remMemReg:
            try size(is: 8 + VhostUserMemoryRegion.byteCount)
            let region = VhostUserMemoryRegion.parse(payload, at: 8)
            guard region.isWellFormed else { throw VhostUserProtocolError("\(request): the region is empty or wraps past 2^64") }
            message = request == .addMemReg ? .addMemoryRegion(region) : .removeMemoryRegion(region)
        case .setStatus:
            let value = try u64()
            guard value <= 0xff else { throw VhostUserProtocolError("\(request): status 0x\(String(value, radix: 16)) is more than a byte") }
            message = .setStatus(UInt8(value))
        case .getStatus: try size(is: 0); message = .getStatus
        default:
            message = .unsupported(request)
        }
        if case .unsupported = message { return message }
        guard descriptorCount == message.expectedDescriptors else {
            throw VhostUserProtocolError("\(request): \(descriptorCount) file descriptors, expected \(message.expectedDescriptors)")
        }
        return message
    }
}
