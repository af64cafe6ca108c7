import CStrataShim
import Glibc
import StrataDevices
import StrataGraph
import StrataRuntime
import StrataVhostUser

/// One front end (QEMU's vhost-user-blk-pci, or `strata bench --vhost-user`) on a vhost-user-blk
/// export: reads its messages in order on the control executor, keeps the device's negotiated
/// state (features, guest memory, one `Vring` per virtqueue, the config space) and starts each
/// virtqueue on its queue executor once it is fully described.
///
/// A message that is malformed, names a ring that does not exist, or breaks the protocol's order
/// ends the connection: the front end sees the device needing a reset, and every other export
/// and connection goes on. A virtqueue's own faults (descriptors out of guest memory, loops) are
/// answered per request by the device model.
actor VhostUserConnection {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let export: VhostUserBlkExport
    let channel: VhostUserChannel
    let number: Int

    struct Vring {
        var size = 0
        var address: VhostUserVringAddress?
        /// The available position to start from (SET_VRING_BASE, or where a stopped queue left off).
        var base: UInt16 = 0
        var kickFD: Int32 = -1
        var callFD: Int32 = -1
        var errorFD: Int32 = -1
        var enabled = true
        var runner: VhostUserVringRunner?
    }

    var features: VirtioFeatures = []
    var protocolFeatures: VhostUserProtocolFeatures = []
    var memory: VhostUserMappedMemory?
    /// The inflight region (GET_INFLIGHT_FD made it, or SET_INFLIGHT_FD brought a predecessor's).
    var inflight: VhostUserInflightRegion?
    var vrings: [Vring]
    var writeback: UInt8 = 1

    init(export: VhostUserBlkExport, socket: RingSocket, number: Int) {
        unownedExecutor = export.controller.control.asUnownedSerialExecutor()
        self.export = export
        channel = VhostUserChannel(socket: socket)
        self.number = number
        vrings = Array(repeating: Vring(), count: export.options.queueCount)
    }

    var offeredFeatures: VirtioFeatures {
        var offered: VirtioFeatures = [.blockSegmentMax, .blockTopology, .blockSize, .blockFlush, .blockDiscard, .blockWriteZeroes,
                                       .blockConfigWCE, .blockMultiQueue, .version1, .ringIndirectDescriptors, .ringEventIndex,
                                       .protocolFeatures]
        if !export.options.writable { offered.insert(.blockReadOnly) }
        return offered
    }

    static let offeredProtocolFeatures: VhostUserProtocolFeatures = [.multiQueue, .replyAck, .config, .resetDevice,
                                                                     .inflightSharedMemory]

    func log(_ message: String) { export.log("vhost-user-blk export '\(export.options.id)' client \(number): \(message)") }

    /// Serves messages until the front end goes away or breaks the protocol, then stops every
    /// queue and gives everything back.
    func run() async {
        while true {
            let received: VhostUserChannel.Received?
            do { received = try await channel.receive() } catch {
                log("\(error)")
                break
            }
            guard let received else { break }
            do {
                try await handle(received)
            } catch {
                log("\(error); closing the connection")
                break
            }
        }
        await stopAll()
        for index in vrings.indices { closeDescriptors(of: index) }
        memory = nil
        inflight = nil
        try? await channel.socket.close()
        export.connectionEnded(self)
    }

    // MARK: Messages

    private func handle(_ received: VhostUserChannel.Received) async throws(VhostUserProtocolError) {
        let header = received.header
        let message: VhostUserMessage
        do {
            message = try VhostUserMessage.parse(header, payload: received.payload, descriptorCount: received.descriptors.count)
        } catch {
            for fd in received.descriptors { close(fd) }
            throw error
        }
        var descriptors = received.descriptors
        let request = header.request
        // Whether REPLY_ACK owes the front end a status for this message.
        var acknowledge = protocolFeatures.contains(.replyAck) && header.needsReply
        var succeeded = true

        switch message {
        case .getFeatures:
            acknowledge = false
            try await channel.sendReply(to: request, value: offeredFeatures.rawValue)
        case .setFeatures(let value):
            let wanted = VirtioFeatures(rawValue: value)
            guard offeredFeatures.isSuperset(of: wanted) else {
                throw VhostUserProtocolError("\(request): features 0x\(String(value, radix: 16)) include some never offered")
            }
            features = wanted
        case .getProtocolFeatures:
            acknowledge = false
            try await channel.sendReply(to: request, value: Self.offeredProtocolFeatures.rawValue)
        case .setProtocolFeatures(let value):
            let wanted = VhostUserProtocolFeatures(rawValue: value)
            guard Self.offeredProtocolFeatures.isSuperset(of: wanted) else {
                throw VhostUserProtocolError("\(request): protocol features 0x\(String(value, radix: 16)) include some never offered")
            }
            protocolFeatures = wanted
            acknowledge = acknowledge && wanted.contains(.replyAck)
        case .getQueueNum:
            acknowledge = false
            try await channel.sendReply(to: request, value: UInt64(vrings.count))
        case .setOwner:
            break
        case .resetOwner, .resetDevice:
            await stopAll()
            for index in vrings.indices { closeDescriptors(of: index) }
            vrings = Array(repeating: Vring(), count: vrings.count)
            features = []
            writeback = 1
        case .setMemTable(let regions):
            descriptors = []
            try await setMemoryTable(regions, received.descriptors)
        case .setVringNum(let state):
            let index = try vringIndex(state.index, request)
            guard SplitVirtqueue.isValidSize(Int(state.number)), vrings[index].runner == nil else {
                throw VhostUserProtocolError("\(request): ring \(index) size \(state.number) is not a power of two up to 32768, or the ring runs")
            }
            vrings[index].size = Int(state.number)
        case .setVringAddress(let address):
            let index = try vringIndex(address.index, request)
            guard address.flags & VhostUserVringAddress.logFlag == 0 else {
                throw VhostUserProtocolError("\(request): ring \(index) asks for used-ring logging, which was not offered")
            }
            guard vrings[index].runner == nil else { throw VhostUserProtocolError("\(request): ring \(index) runs") }
            vrings[index].address = address
        case .setVringBase(let state):
            let index = try vringIndex(state.index, request)
            guard state.number <= UInt32(UInt16.max), vrings[index].runner == nil else {
                throw VhostUserProtocolError("\(request): ring \(index) base \(state.number) is not a 16-bit index, or the ring runs")
            }
            vrings[index].base = UInt16(state.number)
        case .getVringBase(let ringIndex):
            acknowledge = false
            let index = try vringIndex(ringIndex, request)
            await stop(index)
            // Stopped until the front end sends a new kick descriptor (as libvhost-user does).
            closeDescriptors(of: index)
            let base = vrings[index].base
            try await channel.sendReply(to: request) { bytes in
                VhostUserVringState(index: UInt32(index), number: UInt32(base)).encode(into: bytes)
                return VhostUserVringState.byteCount
            }
        case .setVringKick(let ringIndex, let hasDescriptor):
            let index = try vringIndex(ringIndex, request)
            guard hasDescriptor else { throw VhostUserProtocolError("\(request): ring \(index) without a kick descriptor (polling) is not supported") }
            let fd = descriptors.removeFirst()
            guard Self.isEventFD(fd) else {
                close(fd)
                throw VhostUserProtocolError("\(request): ring \(index): the kick descriptor is not an eventfd")
            }
            await stop(index)
            if vrings[index].kickFD >= 0 { close(vrings[index].kickFD) }
            vrings[index].kickFD = fd
            try await startIfReady(index)
        case .setVringCall(let ringIndex, let hasDescriptor):
            let index = try vringIndex(ringIndex, request)
            let fd = hasDescriptor ? descriptors.removeFirst() : -1
            guard fd < 0 || Self.isEventFD(fd) else {
                close(fd)
                throw VhostUserProtocolError("\(request): ring \(index): the call descriptor is not an eventfd")
            }
            let old = vrings[index].callFD
            vrings[index].callFD = fd
            if let runner = vrings[index].runner { await runner.replaceCall(fd, device: runner.device) }
            if old >= 0 { close(old) }
        case .setVringError(let ringIndex, let hasDescriptor):
            let index = try vringIndex(ringIndex, request)
            if vrings[index].errorFD >= 0 { close(vrings[index].errorFD) }
            vrings[index].errorFD = hasDescriptor ? descriptors.removeFirst() : -1
        case .setVringEnable(let state):
            let index = try vringIndex(state.index, request)
            guard features.contains(.protocolFeatures) else {
                throw VhostUserProtocolError("\(request) without VHOST_USER_F_PROTOCOL_FEATURES negotiated")
            }
            guard state.number <= 1 else { throw VhostUserProtocolError("\(request): ring \(index) enable is \(state.number), not 0 or 1") }
            vrings[index].enabled = state.number == 1
            if state.number == 1 { try await startIfReady(index) } else { await stop(index) }
        case .getConfig(let offset, let size, let flags):
            acknowledge = false
            guard UInt64(offset) + UInt64(size) <= UInt64(VhostUserMessage.maxConfigBytes) else {
                throw VhostUserProtocolError("\(request): \(size) bytes at offset \(offset) lie outside the config space")
            }
            let space = await configSpace()
            try await channel.sendReply(to: request) { bytes in
                VhostUserWireOut.putConfig(offset: offset, size: size, flags: flags, space: space, into: bytes)
            }
        case .setConfig(let offset, _, let bytes):
            // Only the writeback byte is the driver's to write (QEMU's check too).
            if offset == UInt32(VirtioBlkConfig.writebackOffset) && bytes.count == 1 && bytes[0] <= 1 {
                writeback = bytes[0]
                for vring in vrings {
                    guard let runner = vring.runner else { continue }
                    await runner.setWriteCache(bytes[0] == 1)
                }
            } else {
                log("\(request): \(bytes.count) bytes at offset \(offset) refused; only the writeback byte is writable")
                succeeded = false
            }
        case .getInflightFD(let asked):
            acknowledge = false
            guard protocolFeatures.contains(.inflightSharedMemory) else { throw VhostUserProtocolError("\(request) without INFLIGHT_SHMFD negotiated") }
            guard asked.queueCount >= 1, Int(asked.queueCount) <= vrings.count, SplitVirtqueue.isValidSize(Int(asked.queueSize)) else {
                throw VhostUserProtocolError("\(request): \(asked.queueCount) queues of \(asked.queueSize) entries")
            }
            let region = try VhostUserInflightRegion(queueCount: Int(asked.queueCount), queueSize: Int(asked.queueSize))
            inflight = region
            try await channel.sendReply(to: request, descriptors: [region.fd]) { bytes in
                VhostUserInflight(mmapSize: UInt64(region.byteCount), mmapOffset: 0, queueCount: asked.queueCount,
                                  queueSize: asked.queueSize).encode(into: bytes)
                return VhostUserInflight.byteCount
            }
        case .setInflightFD(let given):
            let fd = descriptors.removeFirst()
            guard protocolFeatures.contains(.inflightSharedMemory), vrings.allSatisfy({ $0.runner == nil }) else {
                close(fd)
                throw VhostUserProtocolError("\(request) without INFLIGHT_SHMFD negotiated, or while rings run")
            }
            inflight = try VhostUserInflightRegion(adopting: fd, description: given)
        case .setBackendRequestFD, .getMaxMemSlots, .addMemoryRegion, .removeMemoryRegion, .setStatus, .getStatus, .unsupported:
            for fd in descriptors { close(fd) }
            descriptors = []
            throw VhostUserProtocolError("\(request) is not supported by this back end (its feature was not offered)")
        }
        for fd in descriptors { close(fd) }
        if acknowledge { try await channel.sendReply(to: request, value: succeeded ? 0 : 1) }
    }

    private func vringIndex(_ index: UInt32, _ request: VhostUserRequest) throws(VhostUserProtocolError) -> Int {
        guard Int(index) < vrings.count else {
            throw VhostUserProtocolError("\(request): ring \(index) does not exist (num-queues=\(vrings.count))")
        }
        return Int(index)
    }

    /// Whether `fd` is an eventfd: anything else (a pipe that fills, a file that reads at once)
    /// would let a front end stall or spin a queue executor.
    static func isEventFD(_ fd: Int32) -> Bool {
        var buffer = [CChar](repeating: 0, count: 64)
        let length = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard length > 0 else { return false }
        return String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[eventfd]"
    }

    private func closeDescriptors(of index: Int) {
        for fd in [vrings[index].kickFD, vrings[index].callFD, vrings[index].errorFD] where fd >= 0 { close(fd) }
        vrings[index].kickFD = -1
        vrings[index].callFD = -1
        vrings[index].errorFD = -1
    }

    // MARK: Memory

    private func setMemoryTable(_ regions: [VhostUserMemoryRegion], _ descriptors: [Int32]) async throws(VhostUserProtocolError) {
        let mapped = try VhostUserMappedMemory(regions: regions, descriptors: descriptors)
        // Queues running on the old memory stop first, and restart on the new.
        var running: [Int] = []
        for index in vrings.indices where vrings[index].runner != nil {
            running.append(index)
            await stop(index)
        }
        memory = mapped
        for index in running { try await startIfReady(index) }
    }

    // MARK: Queues

    /// Starts ring `index` when everything it needs has arrived: memory, size, addresses, a kick
    /// descriptor, and enabled.
    private func startIfReady(_ index: Int) async throws(VhostUserProtocolError) {
        let vring = vrings[index]
        guard vring.runner == nil, vring.enabled, vring.kickFD >= 0, vring.size > 0, let address = vring.address,
              let memory else { return }
        let guestMemory = memory.memory
        let size = UInt64(vring.size)
        guard let table = guestMemory.guestAddress(ofUserAddress: address.descriptorTable, length: 16 * size),
              let available = guestMemory.guestAddress(ofUserAddress: address.availableRing, length: 6 + 2 * size),
              let used = guestMemory.guestAddress(ofUserAddress: address.usedRing, length: 6 + 8 * size) else {
            throw VhostUserProtocolError("ring \(index): its addresses lie outside the memory table")
        }
        let queue: SplitVirtqueue
        do {
            queue = try SplitVirtqueue(memory: guestMemory, size: vring.size, descriptorTable: table, availableRing: available, usedRing: used)
        } catch {
            throw VhostUserProtocolError("ring \(index): \(error)")
        }
        let record = inflight?.record(queue: index, size: vring.size)
        guard let runner = await export.startQueue(index, queue: queue, base: vring.base, eventIndex: features.contains(.ringEventIndex),
                                                   writeCache: writeback == 1, inflight: record, kickFD: vring.kickFD,
                                                   callFD: vring.callFD) else {
            throw VhostUserProtocolError("ring \(index): the export's node is gone")
        }
        vrings[index].runner = runner
    }

    /// Stops ring `index` if it runs, keeping where it stopped as its base.
    private func stop(_ index: Int) async {
        guard let runner = vrings[index].runner else { return }
        vrings[index].runner = nil
        vrings[index].base = await export.stopQueue(runner)
    }

    private func stopAll() async {
        for index in vrings.indices { await stop(index) }
    }

    private func configSpace() async -> VirtioBlkConfig {
        var config = VirtioBlkConfig(capacitySectors: await export.capacityBytes() / UInt64(VirtioBlk.sectorSize),
                                     segmentMax: UInt32(VhostUserBlkExport.segmentMax),
                                     logicalBlockSize: UInt32(export.options.logicalBlockSize), queueCount: UInt16(vrings.count))
        config.writeback = writeback
        return config
    }
}

/// Reply payloads the connection writes.
enum VhostUserWireOut {
    /// GET_CONFIG's reply: offset, size, flags, then the requested bytes (zeros past the space).
    static func putConfig(offset: UInt32, size: UInt32, flags: UInt32, space: VirtioBlkConfig,
                          into bytes: UnsafeMutableRawBufferPointer) -> Int {
        bytes.storeBytes(of: offset.littleEndian, toByteOffset: 0, as: UInt32.self)
        bytes.storeBytes(of: size.littleEndian, toByteOffset: 4, as: UInt32.self)
        bytes.storeBytes(of: flags.littleEndian, toByteOffset: 8, as: UInt32.self)
        let config = space.bytes
        for index in 0..<Int(size) {
            let source = Int(offset) + index
            bytes[12 + index] = source < config.count ? config[source] : 0
        }
        return 12 + Int(size)
    }
}
