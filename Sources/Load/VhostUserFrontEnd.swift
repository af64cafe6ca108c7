import CStrataShim
import Glibc
import StrataDevices
import StrataRuntime
import StrataVhostUser

/// The control side of a vhost-user front end, as QEMU's vhost-user-blk device speaks it: feature
/// and protocol-feature negotiation, the config space, the memory table and each virtqueue's
/// setup and teardown. Runs on the control executor's ring; the back end may be Strata's export
/// or any other (qemu-storage-daemon's). Everything it answers is checked: a back end is another
/// process and may be broken.
final class VhostUserFrontEnd {
    /// What the back end's device looks like after negotiation.
    struct Device {
        var features: VirtioFeatures
        var protocolFeatures: VhostUserProtocolFeatures
        var capacityBytes: UInt64
        var queueCount: Int
        var readOnly: Bool { features.contains(.blockReadOnly) }
        var eventIndex: Bool { features.contains(.ringEventIndex) }
    }

    static let wantedFeatures: VirtioFeatures = [.version1, .ringEventIndex, .protocolFeatures, .blockFlush, .blockMultiQueue,
                                                 .blockSegmentMax, .blockSize, .blockReadOnly, .blockDiscard, .blockWriteZeroes,
                                                 .blockTopology]
    static let wantedProtocolFeatures: VhostUserProtocolFeatures = [.multiQueue, .replyAck, .config]

    let path: String
    private let socket: RingSocket
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserHeader.byteCount + VhostUserHeader.maxPayloadBytes,
                                                                alignment: 8)
    private var protocolFeatures: VhostUserProtocolFeatures = []
    /// One message's iovec and header, and room for its descriptors, made once.
    private static let maxDescriptors = 8
    private let vector = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
    private let message = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
    private let controlBytes = strata_cmsg_space_fds(Int32(maxDescriptors))
    private let control: UnsafeMutableRawPointer

    /// Connects to the back end's socket (a blocking connect on the control path: a Unix socket
    /// answers at once or refuses).
    init(path: String) throws(VhostUserProtocolError) {
        self.path = path
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VhostUserProtocolError("vhost-user \(path): socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(fd)
            throw VhostUserProtocolError("vhost-user socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (index, byte) in bytes.enumerated() { raw[index] = byte } }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let error = errno
            Glibc.close(fd)
            throw VhostUserProtocolError("vhost-user \(path): connect: \(String(cString: strerror(error)))")
        }
        socket = RingSocket(fd: fd)
        control = UnsafeMutableRawPointer.allocate(byteCount: controlBytes, alignment: 8)
    }

    deinit {
        buffer.deallocate()
        vector.deallocate()
        message.deallocate()
        control.deallocate()
        Glibc.close(socket.fd)
    }

    // MARK: Session

    /// Negotiates features and reads the config space, for a run on `queues` virtqueues.
    func negotiate(queues: Int) async throws(VhostUserProtocolError) -> Device {
        let offered = VirtioFeatures(rawValue: try await requestValue(.getFeatures))
        guard offered.contains(.protocolFeatures), offered.contains(.version1) else {
            throw VhostUserProtocolError("vhost-user \(path): the back end offers no protocol features or no VIRTIO_F_VERSION_1")
        }
        let offeredProtocol = VhostUserProtocolFeatures(rawValue: try await requestValue(.getProtocolFeatures))
        guard offeredProtocol.contains(.config) else { throw VhostUserProtocolError("vhost-user \(path): the back end has no config space") }
        protocolFeatures = offeredProtocol.intersection(Self.wantedProtocolFeatures)
        try await send(.setProtocolFeatures, value: protocolFeatures.rawValue)
        if queues > 1 {
            guard protocolFeatures.contains(.multiQueue) else { throw VhostUserProtocolError("vhost-user \(path): no multiqueue support") }
            let most = try await requestValue(.getQueueNum)
            guard UInt64(queues) <= most else { throw VhostUserProtocolError("vhost-user \(path): \(queues) queues asked, the back end has \(most)") }
        }
        try await send(.setOwner)
        let config = try await readConfig()
        let features = offered.intersection(Self.wantedFeatures)
        try await send(.setFeatures, value: features.rawValue)
        if features.contains(.blockMultiQueue), Int(config.queueCount) < queues {
            throw VhostUserProtocolError("vhost-user \(path): \(queues) queues asked, the device has \(config.queueCount)")
        }
        return Device(features: features, protocolFeatures: protocolFeatures, capacityBytes: config.capacitySectors * UInt64(VirtioBlk.sectorSize),
                      queueCount: Int(config.queueCount))
    }

    /// GET_CONFIG of the virtio-blk config space.
    private func readConfig() async throws(VhostUserProtocolError) -> VirtioBlkConfig {
        let size = VirtioBlkConfig.byteCount
        let reply = try await request(.getConfig, payloadBytes: 12 + size) { bytes in
            bytes.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: UInt32(size).littleEndian, toByteOffset: 4, as: UInt32.self)
            bytes.storeBytes(of: UInt32(0), toByteOffset: 8, as: UInt32.self)
        }
        guard reply.count == 12 + size else { throw VhostUserProtocolError("vhost-user \(path): GET_CONFIG answered \(reply.count) bytes") }
        func load<T: FixedWidthInteger>(_ offset: Int, as type: T.Type) -> T {
            T(littleEndian: reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 12 + offset, as: T.self) })
        }
        return VirtioBlkConfig(capacitySectors: load(0, as: UInt64.self), segmentMax: load(12, as: UInt32.self),
                               logicalBlockSize: load(20, as: UInt32.self), queueCount: max(1, load(34, as: UInt16.self)))
    }

    /// SET_MEM_TABLE: one region, `size` bytes of the memfd `fd`, which this process has at
    /// `host` and calls guest address 0.
    func setMemory(fd: Int32, size: UInt64, host: UnsafeMutableRawPointer) async throws(VhostUserProtocolError) {
        let region = VhostUserMemoryRegion(guestAddress: 0, size: size, userAddress: UInt64(UInt(bitPattern: host)), mmapOffset: 0)
        try await send(.setMemTable, payloadBytes: 8 + VhostUserMemoryRegion.byteCount, descriptors: [fd], acknowledged: true) { bytes in
            bytes.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
            region.encode(into: bytes, at: 8)
        }
    }

    /// Describes virtqueue `index` to the back end and starts it.
    func startVring(_ index: Int, queue: SplitVirtqueue, kickFD: Int32, callFD: Int32) async throws(VhostUserProtocolError) {
        let ring = UInt32(index)
        try await send(.setVringNum, state: VhostUserVringState(index: ring, number: UInt32(queue.size)))
        try await send(.setVringBase, state: VhostUserVringState(index: ring, number: 0))
        func user(_ pointer: UnsafeMutableRawPointer) -> UInt64 { UInt64(UInt(bitPattern: pointer)) }
        let address = VhostUserVringAddress(index: ring, descriptorTable: user(queue.descriptors), usedRing: user(queue.used),
                                            availableRing: user(queue.available))
        try await send(.setVringAddr, payloadBytes: VhostUserVringAddress.byteCount) { address.encode(into: $0) }
        try await send(.setVringKick, value: UInt64(index), descriptors: [kickFD])
        try await send(.setVringCall, value: UInt64(index), descriptors: [callFD])
        try await send(.setVringEnable, state: VhostUserVringState(index: ring, number: 1), acknowledged: true)
    }

    /// GET_VRING_BASE: stops virtqueue `index` and returns where it stopped.
    func stopVring(_ index: Int) async throws(VhostUserProtocolError) -> UInt16 {
        let reply = try await request(.getVringBase, payloadBytes: VhostUserVringState.byteCount) { bytes in
            VhostUserVringState(index: UInt32(index), number: 0).encode(into: bytes)
        }
        guard reply.count == VhostUserVringState.byteCount else {
            throw VhostUserProtocolError("vhost-user \(path): GET_VRING_BASE answered \(reply.count) bytes")
        }
        return UInt16(truncatingIfNeeded: reply.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) })
    }

    // MARK: Messages

    private func send(_ request: VhostUserRequest, value: UInt64, descriptors: [Int32] = []) async throws(VhostUserProtocolError) {
        try await send(request, payloadBytes: 8, descriptors: descriptors) { $0.storeBytes(of: value.littleEndian, as: UInt64.self) }
    }

    private func send(_ request: VhostUserRequest, state: VhostUserVringState, acknowledged: Bool = false) async throws(VhostUserProtocolError) {
        try await send(request, payloadBytes: VhostUserVringState.byteCount, acknowledged: acknowledged) { state.encode(into: $0) }
    }

    private func send(_ request: VhostUserRequest) async throws(VhostUserProtocolError) {
        try await send(request, payloadBytes: 0) { _ in }
    }

    /// Sends a message without a reply of its own; with `acknowledged` and REPLY_ACK negotiated,
    /// waits for the back end's status and fails on a non-zero one.
    private func send(_ request: VhostUserRequest, payloadBytes: Int, descriptors: [Int32] = [], acknowledged: Bool = false,
                      _ fill: (UnsafeMutableRawBufferPointer) -> Void) async throws(VhostUserProtocolError) {
        let ack = acknowledged && protocolFeatures.contains(.replyAck)
        try await write(request, payloadBytes: payloadBytes, descriptors: descriptors, needsReply: ack, fill)
        guard ack else { return }
        let reply = try await readReply(to: request)
        guard reply.count == 8 else { throw VhostUserProtocolError("vhost-user \(path): \(request) acknowledged with \(reply.count) bytes") }
        let status = reply.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard status == 0 else { throw VhostUserProtocolError("vhost-user \(path): the back end refused \(request) (status \(status))") }
    }

    /// A u64 answer to a request without payload.
    private func requestValue(_ request: VhostUserRequest) async throws(VhostUserProtocolError) -> UInt64 {
        let reply = try await self.request(request, payloadBytes: 0) { _ in }
        guard reply.count == 8 else { throw VhostUserProtocolError("vhost-user \(path): \(request) answered \(reply.count) bytes, expected 8") }
        return reply.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    private func request(_ request: VhostUserRequest, payloadBytes: Int,
                         _ fill: (UnsafeMutableRawBufferPointer) -> Void) async throws(VhostUserProtocolError) -> [UInt8] {
        try await write(request, payloadBytes: payloadBytes, descriptors: [], needsReply: false, fill)
        return try await readReply(to: request)
    }

    private func write(_ request: VhostUserRequest, payloadBytes: Int, descriptors: [Int32], needsReply: Bool,
                       _ fill: (UnsafeMutableRawBufferPointer) -> Void) async throws(VhostUserProtocolError) {
        precondition(payloadBytes <= VhostUserHeader.maxPayloadBytes)
        let flags = VhostUserHeader.version | (needsReply ? VhostUserHeader.needReplyFlag : 0)
        VhostUserHeader(request: request, flags: flags, size: UInt32(payloadBytes)).encode(into: buffer)
        fill(UnsafeMutableRawBufferPointer(rebasing: buffer[VhostUserHeader.byteCount..<VhostUserHeader.byteCount + payloadBytes]))
        let total = VhostUserHeader.byteCount + payloadBytes
        precondition(descriptors.count <= Self.maxDescriptors)
        vector.pointee = iovec(iov_base: buffer.baseAddress, iov_len: total)
        message.pointee = msghdr()
        message.pointee.msg_iov = vector
        message.pointee.msg_iovlen = 1
        if !descriptors.isEmpty {
            message.pointee.msg_control = control
            message.pointee.msg_controllen = controlBytes
            descriptors.withUnsafeBufferPointer { strata_cmsg_put_fds(message, $0.baseAddress, Int32($0.count)) }
        }
        let sent: Int
        do { sent = try await socket.sendMessage(message) } catch {
            throw VhostUserProtocolError("vhost-user \(path): \(request): \(error)")
        }
        if sent < total {
            do { try await socket.sendAll(from: buffer.baseAddress! + sent, count: total - sent) } catch {
                throw VhostUserProtocolError("vhost-user \(path): \(request): \(error)")
            }
        }
    }

    private func readReply(to request: VhostUserRequest) async throws(VhostUserProtocolError) -> [UInt8] {
        do {
            try await socket.receiveExactly(into: buffer.baseAddress!, count: VhostUserHeader.byteCount)
            let header = try VhostUserHeader.parse(UnsafeRawBufferPointer(buffer))
            guard header.isReply, header.request == request else {
                throw VhostUserProtocolError("vhost-user \(path): expected a reply to \(request), got \(header.request)")
            }
            if header.size > 0 { try await socket.receiveExactly(into: buffer.baseAddress!, count: Int(header.size)) }
            return Array(UnsafeRawBufferPointer(rebasing: buffer[..<Int(header.size)]))
        } catch let error as VhostUserProtocolError {
            throw error
        } catch {
            throw VhostUserProtocolError("vhost-user \(path): reply to \(request): \(error)")
        }
    }
}
