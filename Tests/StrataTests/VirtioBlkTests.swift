import StrataDevices
import StrataGraph
import StrataLoad
import Testing

/// A queue of 16 with its driver, device, request encoder and per-request segment storage, in one
/// guest memory: queue at the base, header/status slots after it, data from `data` on.
private final class BlkHarness {
    static let guestBase: UInt64 = 0x4000_0000
    static let queueSize = 16

    let memory: GuestMemory
    let queue: SplitVirtqueue
    var driver: VirtqueueDriver
    var device: VirtqueueDevice
    let encoder: VirtioBlkRequestEncoder
    let storage: UnsafeMutableBufferPointer<IOBuffer>
    let capacitySectors: UInt64
    var data: UInt64 { Self.guestBase + 0x1_0000 }

    init(capacitySectors: UInt64 = 1 << 20, segments: Int = 4) throws {
        memory = try GuestMemory(guestBase: Self.guestBase, size: 1 << 20)
        queue = try SplitVirtqueue(memory: memory, size: Self.queueSize, at: Self.guestBase)
        driver = VirtqueueDriver(queue: queue)
        device = VirtqueueDevice(queue: queue)
        encoder = try VirtioBlkRequestEncoder(memory: memory, queueSize: Self.queueSize, slotArea: Self.guestBase + 0x4000)
        storage = .allocate(capacity: segments)
        storage.initialize(repeating: .empty)
        self.capacitySectors = capacitySectors
    }

    deinit {
        storage.deallocate()
        memory.deallocate()
    }

    func host(_ address: UInt64, _ length: Int = 0) -> UnsafeMutableRawPointer? {
        memory.translate(address: address, length: UInt64(length))
    }

    /// Encodes, publishes, pops and parses one request, as the load generator and device would.
    func submit(_ type: VirtioBlkRequestType, sector: UInt64 = 0, dataOffset: UInt64 = 0,
                length: UInt32 = 0) throws -> VirtioBlkRequest {
        let head = try #require(encoder.encode(into: &driver, type: type, sector: sector, dataAddress: data + dataOffset,
                                                dataLength: length))
        driver.publish(head: head)
        let popped = try device.popAvail()
        #expect(popped == head)
        return try VirtioBlkRequest.parse(device.chain(head: head), capacitySectors: capacitySectors, segmentStorage: storage)
    }

    /// Writes `descriptors` as one chain at table index 0 onward (NEXT set on all but the last)
    /// and parses it, bypassing the encoder so framing can be broken on purpose.
    func parseRaw(_ descriptors: [VirtqueueDescriptor]) -> Result<VirtioBlkRequest, VirtioBlkRequest.ParseError> {
        for (index, var descriptor) in descriptors.enumerated() {
            if index < descriptors.count - 1 {
                descriptor.flags.insert(.next)
                descriptor.next = UInt16(index + 1)
            }
            queue.storeDescriptor(descriptor, at: UInt16(index))
        }
        do {
            return .success(try VirtioBlkRequest.parse(device.chain(head: 0), capacitySectors: capacitySectors,
                                                       segmentStorage: storage))
        } catch {
            return .failure(error)
        }
    }

    /// A device-readable header at data + `at`.
    func header(_ type: VirtioBlkRequestType, sector: UInt64 = 0, at offset: UInt64 = 0, length: UInt32 = 16,
                flags: VirtqueueDescriptor.Flags = []) -> VirtqueueDescriptor {
        let bytes = host(data + offset, 16)!
        bytes.storeBytes(of: type.rawValue.littleEndian, as: UInt32.self)
        bytes.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        bytes.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        return VirtqueueDescriptor(address: data + offset, length: length, flags: flags)
    }

    /// A discard/write-zeroes range record at data + `at`.
    func range(sector: UInt64, count: UInt32, flags: UInt32, at offset: UInt64) {
        let bytes = host(data + offset, 16)!
        bytes.storeBytes(of: sector.littleEndian, as: UInt64.self)
        bytes.storeBytes(of: count.littleEndian, toByteOffset: 8, as: UInt32.self)
        bytes.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt32.self)
    }

    func status(at offset: UInt64 = 0xF000) -> VirtqueueDescriptor {
        VirtqueueDescriptor(address: data + offset, length: 1, flags: .write)
    }
}

@Suite struct VirtioBlkTests {
    @Test func readBecomesZeroCopyBlockRequestAndCompletesThroughTheUsedRing() throws {
        let harness = try BlkHarness()
        let request = try harness.submit(.read, sector: 8, dataOffset: 0x2000, length: 4096)
        #expect(request.type == .read)
        #expect(request.action == .io(.read))
        #expect(request.offsetBytes == 8 * 512)
        #expect(request.lengthBytes == 4096)
        let data = try #require(request.data)
        #expect(data.base == harness.host(harness.data + 0x2000))
        #expect(data.count == 4096)
        let block = try #require(request.blockRequest(tag: 7, submitNs: 99))
        #expect(block.operation == .read && block.offsetBytes == 4096 && block.lengthBytes == 4096)
        #expect(block.buffer.base == data.base && block.tag == 7 && block.submitNs == 99)

        #expect(harness.encoder.status(head: request.head) == 0xFF)  // not answered yet
        harness.device.pushUsed(id: request.head, length: request.complete(.ok))
        let used = harness.driver.reapUsed()
        #expect(used?.id == request.head)
        #expect(used?.len == 4097)  // data plus status byte
        #expect(harness.encoder.status(head: request.head) == VirtioBlkStatus.ok.rawValue)
        harness.driver.freeChain(head: request.head)
        #expect(harness.driver.freeCount == BlkHarness.queueSize)
    }

    @Test func parsesWriteAndFlushHeaders() throws {
        let harness = try BlkHarness()
        let write = try harness.submit(.write, sector: 3, dataOffset: 0x800, length: 1024)
        #expect(write.action == .io(.write))
        #expect(write.sector == 3 && write.offsetBytes == 1536 && write.lengthBytes == 1024)
        #expect(write.data?.base == harness.host(harness.data + 0x800))
        #expect(write.complete(.ok) == 1)  // a write returns only the status byte

        let flush = try harness.submit(.flush)
        #expect(flush.action == .io(.flush))
        #expect(flush.offsetBytes == 0 && flush.lengthBytes == 0 && flush.segments.isEmpty)
        let block = try #require(flush.blockRequest())
        #expect(block.operation == .flush && block.buffer.count == 0)
        #expect(flush.complete(.ioError) == 1)
        #expect(flush.status.load(as: UInt8.self) == VirtioBlkStatus.ioError.rawValue)
    }

    @Test func unknownTypesAreUnsupported() throws {
        let harness = try BlkHarness()
        for raw: UInt32 in [2, 10, 14, 16, 99, .max] {  // includes GET_LIFETIME and SECURE_ERASE: not offered
            let request = try harness.submit(VirtioBlkRequestType(rawValue: raw), dataOffset: 0, length: 512)
            #expect(request.action == .complete(.unsupported), "type \(raw)")
            #expect(request.blockRequest() == nil)
            harness.device.pushUsed(id: request.head, length: request.complete(.unsupported))
            let used = harness.driver.reapUsed()
            #expect(used?.len == 1)
            #expect(harness.encoder.status(head: request.head) == VirtioBlkStatus.unsupported.rawValue)
            harness.driver.freeChain(head: request.head)
        }
    }

    @Test func getIDAnswersTwentyBytesNulPadded() throws {
        let harness = try BlkHarness()
        let request = try harness.submit(.getID, dataOffset: 0x100, length: 20)
        #expect(request.action == .getID)
        #expect(request.blockRequest() == nil)
        let buffer = try #require(harness.host(harness.data + 0x100, 20))
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 20)
        #expect(request.completeGetID("strata-disk") == 21)
        let bytes = (0..<20).map { buffer.load(fromByteOffset: $0, as: UInt8.self) }
        #expect(bytes == Array("strata-disk".utf8) + Array(repeating: 0, count: 9))
        #expect(harness.encoder.status(head: request.head) == 0)

        harness.driver.freeChain(head: request.head)
        let long = try harness.submit(.getID, dataOffset: 0x100, length: 20)
        #expect(long.completeGetID("0123456789abcdefghijKLMN") == 21)  // truncated, no terminator
        #expect((0..<20).map { buffer.load(fromByteOffset: $0, as: UInt8.self) } == Array("0123456789abcdefghij".utf8))

        harness.driver.freeChain(head: long.head)
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 20)
        let short = try harness.submit(.getID, dataOffset: 0x100, length: 8)
        #expect(short.completeGetID("strata-disk") == 9)  // only what the buffer holds
        #expect((0..<9).map { buffer.load(fromByteOffset: $0, as: UInt8.self) } == Array("strata-d".utf8) + [0xEE])
    }

    @Test func discardAndWriteZeroesTakeTheirRange() throws {
        let harness = try BlkHarness(capacitySectors: 1000)
        harness.range(sector: 100, count: 50, flags: 0, at: 0x400)
        let discard = try harness.submit(.discard, dataOffset: 0x400, length: 16)
        #expect(discard.action == .io(.discard))
        #expect(discard.offsetBytes == 100 * 512 && discard.lengthBytes == 50 * 512 && discard.flags.isEmpty)
        #expect(discard.segments.isEmpty)
        let block = try #require(discard.blockRequest())
        #expect(block.operation == .discard && block.buffer.count == 0 && block.lengthBytes == 50 * 512)
        harness.driver.freeChain(head: discard.head)

        harness.range(sector: 950, count: 50, flags: 1, at: 0x400)  // ends exactly at capacity
        let zeroes = try harness.submit(.writeZeroes, dataOffset: 0x400, length: 16)
        #expect(zeroes.action == .io(.writeZeroes))
        #expect(zeroes.offsetBytes == 950 * 512 && zeroes.lengthBytes == 50 * 512)
        #expect(zeroes.flags == .mayUnmap)
        harness.driver.freeChain(head: zeroes.head)

        harness.range(sector: 0, count: 8, flags: 0, at: 0x400)
        let plain = try harness.submit(.writeZeroes, dataOffset: 0x400, length: 16)
        #expect(plain.action == .io(.writeZeroes) && plain.flags.isEmpty)
    }

    @Test func rangeRulesAnswerUnsupportedOrIOError() throws {
        let harness = try BlkHarness(capacitySectors: 1000)
        func answer(_ type: VirtioBlkRequestType, sector: UInt64 = 0, count: UInt32 = 8, flags: UInt32 = 0,
                    length: UInt32 = 16) throws -> VirtioBlkRequest.Action {
            harness.range(sector: sector, count: count, flags: flags, at: 0x400)
            harness.range(sector: 0, count: 1, flags: 0, at: 0x410)
            let request = try harness.submit(type, dataOffset: 0x400, length: length)
            harness.driver.freeChain(head: request.head)
            return request.action
        }
        #expect(try answer(.discard, flags: 1) == .complete(.unsupported))       // unmap on discard
        #expect(try answer(.discard, flags: 2) == .complete(.unsupported))       // reserved flag
        #expect(try answer(.writeZeroes, flags: 0x8000_0001) == .complete(.unsupported))
        #expect(try answer(.discard, length: 32) == .complete(.unsupported))     // two ranges; seg max is 1
        #expect(try answer(.writeZeroes, length: 15) == .complete(.ioError))
        #expect(try answer(.discard, length: 0) == .complete(.ioError))
        #expect(try answer(.discard, sector: 995, count: 6) == .complete(.ioError))  // past capacity
        #expect(try answer(.writeZeroes, sector: 1001, count: 0) == .complete(.ioError))
        #expect(try answer(.discard, sector: .max, count: 1) == .complete(.ioError))
        #expect(try answer(.discard, sector: 1000, count: 0) == .io(.discard))    // empty range at the end
    }

    @Test func rangeSplitAcrossDescriptorsIsGathered() throws {
        let harness = try BlkHarness()
        harness.range(sector: 77, count: 3, flags: 1, at: 0x400)
        // Second half of the record moved elsewhere, so the two descriptors are not adjacent.
        harness.host(harness.data + 0x600, 8)!.copyMemory(from: harness.host(harness.data + 0x408, 8)!, byteCount: 8)
        let result = harness.parseRaw([
            harness.header(.writeZeroes),
            VirtqueueDescriptor(address: harness.data + 0x400, length: 8),
            VirtqueueDescriptor(address: harness.data + 0x600, length: 8),
            harness.status(),
        ])
        let request = try result.get()
        #expect(request.action == .io(.writeZeroes))
        #expect(request.offsetBytes == 77 * 512 && request.lengthBytes == 3 * 512 && request.flags == .mayUnmap)
    }

    @Test func capacityIsEnforcedForReadsAndWrites() throws {
        let harness = try BlkHarness(capacitySectors: 100)
        func action(_ type: VirtioBlkRequestType, sector: UInt64, length: UInt32) throws -> VirtioBlkRequest.Action {
            let request = try harness.submit(type, sector: sector, length: length)
            harness.driver.freeChain(head: request.head)
            return request.action
        }
        #expect(try action(.read, sector: 99, length: 512) == .io(.read))        // the last sector
        #expect(try action(.write, sector: 0, length: 51_200) == .io(.write))    // the whole device
        #expect(try action(.read, sector: 99, length: 1024) == .complete(.ioError))
        #expect(try action(.write, sector: 100, length: 512) == .complete(.ioError))
        #expect(try action(.read, sector: 100, length: 0) == .io(.read))         // empty, at the end
        #expect(try action(.read, sector: 101, length: 0) == .complete(.ioError))
    }

    @Test func sectorOverflowIsIOError() throws {
        let harness = try BlkHarness(capacitySectors: .max)
        for sector: UInt64 in [.max, .max / 256, (1 << 55)] {  // sector * 512 needs more than 64 bits
            let request = try harness.submit(.read, sector: sector, length: 512)
            #expect(request.action == .complete(.ioError), "sector \(sector)")
            harness.driver.freeChain(head: request.head)
        }
        let largest = try harness.submit(.write, sector: (1 << 54) - 2, length: 512)
        #expect(largest.action == .io(.write))
        #expect(largest.offsetBytes == ((1 << 54) - 2) * 512)
    }

    @Test func dataMustBeWholeSectorsInTheRightDirection() throws {
        let harness = try BlkHarness()
        let partial = try harness.submit(.write, length: 100)
        #expect(partial.action == .complete(.ioError))
        harness.driver.freeChain(head: partial.head)

        // A read whose data the device could only read, and a write whose data it could only write.
        let readIntoReadOnly = harness.parseRaw([
            harness.header(.read), VirtqueueDescriptor(address: harness.data + 0x1000, length: 512), harness.status(),
        ])
        #expect(try readIntoReadOnly.get().action == .complete(.ioError))
        let writeFromWriteOnly = harness.parseRaw([
            harness.header(.write), VirtqueueDescriptor(address: harness.data + 0x1000, length: 512, flags: .write),
            harness.status(),
        ])
        #expect(try writeFromWriteOnly.get().action == .complete(.ioError))
        let getIDIntoReadOnly = harness.parseRaw([
            harness.header(.getID), VirtqueueDescriptor(address: harness.data + 0x1000, length: 20), harness.status(),
        ])
        #expect(try getIDIntoReadOnly.get().action == .complete(.ioError))
    }

    @Test func framingErrorsAreParseErrors() throws {
        let harness = try BlkHarness()
        let data = VirtqueueDescriptor(address: harness.data + 0x1000, length: 512, flags: .write)
        #expect(harness.parseRaw([harness.header(.read, flags: .write), data, harness.status()])
            .failure == .headerNotDeviceReadable)
        #expect(harness.parseRaw([harness.header(.read, length: 15), data, harness.status()]).failure == .headerTooShort)
        #expect(harness.parseRaw([harness.header(.read), data,
                                  VirtqueueDescriptor(address: harness.data + 0xF000, length: 1)])
            .failure == .statusNotDeviceWritable)
        #expect(harness.parseRaw([harness.header(.flush),
                                  VirtqueueDescriptor(address: harness.data + 0xF000, length: 0, flags: .write)])
            .failure == .statusTooShort)
        #expect(harness.parseRaw([harness.header(.flush)]).failure == .chainTooShort)
        #expect(harness.parseRaw([harness.header(.read),
                                  VirtqueueDescriptor(address: BlkHarness.guestBase + (1 << 20), length: 512, flags: .write),
                                  harness.status()])
            .failure == .chain(.addressOutOfBounds))
        let outOfRange = Result { () throws(VirtioBlkRequest.ParseError) in
            try VirtioBlkRequest.parse(harness.device.chain(head: 16), capacitySectors: 1, segmentStorage: harness.storage)
        }
        #expect(outOfRange.failure == .chain(.descriptorIndexOutOfRange))

        // A longer header and status descriptor are accepted: header first, status last byte.
        let roomy = try harness.parseRaw([
            harness.header(.read, sector: 5, length: 64), data,
            VirtqueueDescriptor(address: harness.data + 0xF000, length: 4, flags: .write),
        ]).get()
        #expect(roomy.action == .io(.read) && roomy.offsetBytes == 5 * 512)
        #expect(roomy.status == harness.host(harness.data + 0xF003))
    }

    @Test func scatteredDataGivesSegmentsAndBounceHelpers() throws {
        let harness = try BlkHarness()
        let request = try harness.parseRaw([
            harness.header(.read, sector: 10),
            VirtqueueDescriptor(address: harness.data + 0x3000, length: 512, flags: .write),
            VirtqueueDescriptor(address: harness.data + 0x1000, length: 1024, flags: .write),
            VirtqueueDescriptor(address: harness.data + 0x1400, length: 512, flags: .write),  // adjacent: merged
            harness.status(),
        ]).get()
        #expect(request.action == .io(.read))
        #expect(request.lengthBytes == 2048)
        #expect(request.data == nil)
        #expect(request.blockRequest() == nil)
        #expect(request.segments.count == 2)
        #expect(request.segments[1].base == harness.host(harness.data + 0x1000) && request.segments[1].count == 1536)

        let perSegment = Array(request.segmentRequests(tag: 3))
        #expect(perSegment.map(\.offsetBytes) == [5120, 5632])
        #expect(perSegment.map(\.lengthBytes) == [512, 1536])
        #expect(perSegment.allSatisfy { $0.operation == .read && $0.tag == 3 })
        #expect(perSegment[0].buffer.base == harness.host(harness.data + 0x3000))

        // Bounce: fill a host buffer, scatter it into the guest, gather it back.
        let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 4096)
        defer { bounce.deallocate() }
        for index in 0..<2048 { bounce[index] = UInt8(truncatingIfNeeded: index * 7) }
        let bounceBuffer = IOBuffer(base: bounce.baseAddress, count: 2048)
        #expect(request.scatter(from: bounceBuffer) == 2048)
        #expect(harness.host(harness.data + 0x3000)!.load(fromByteOffset: 511, as: UInt8.self) == UInt8(truncatingIfNeeded: 511 * 7))
        #expect(harness.host(harness.data + 0x1000)!.load(as: UInt8.self) == UInt8(truncatingIfNeeded: 512 * 7))
        let back = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { back.deallocate() }
        #expect(request.gather(into: IOBuffer(base: back.baseAddress, count: 4096)) == 2048)
        #expect(Array(back[0..<2048]) == Array(bounce))
        #expect(request.gather(into: IOBuffer(base: back.baseAddress, count: 700)) == 700)
        #expect(request.complete(.ok) == 2049)
    }

    @Test func moreSegmentsThanStorageIsIOError() throws {
        let harness = try BlkHarness(segments: 2)
        let result = harness.parseRaw([
            harness.header(.write),
            VirtqueueDescriptor(address: harness.data + 0x1000, length: 512),
            VirtqueueDescriptor(address: harness.data + 0x2000, length: 512),
            VirtqueueDescriptor(address: harness.data + 0x3000, length: 512),
            harness.status(),
        ])
        #expect(try result.get().action == .complete(.ioError))
    }

    @Test func encodedRequestsRoundTripWithDescriptorReuse() throws {
        let harness = try BlkHarness(capacitySectors: 64)
        var sent = 0
        var answered = 0
        var outstanding: [UInt16: (VirtioBlkRequestType, VirtioBlkStatus)] = [:]
        let types: [VirtioBlkRequestType] = [.read, .write, .flush, .read, VirtioBlkRequestType(rawValue: 42)]
        while answered < 2_000 {
            // Fill the queue: 3 descriptors per data request, so 5 fit in 16.
            while sent < 2_000 {
                let type = types[sent % types.count]
                let sector = UInt64(sent % 70)  // some requests run past the 64 sectors
                let length: UInt32 = type == .flush ? 0 : 512
                guard let head = harness.encoder.encode(into: &harness.driver, type: type, sector: sector,
                                                        dataAddress: harness.data, dataLength: length) else { break }
                let expected: VirtioBlkStatus = type.rawValue == 42 ? .unsupported
                    : (type != .flush && sector >= 64) ? .ioError : .ok
                outstanding[head] = (type, expected)
                harness.driver.publish(head: head)
                sent += 1
            }
            while let head = try harness.device.popAvail() {
                let request = try VirtioBlkRequest.parse(harness.device.chain(head: head),
                                                         capacitySectors: harness.capacitySectors,
                                                         segmentStorage: harness.storage)
                let result: VirtioBlkStatus
                switch request.action {
                case .io: result = .ok
                case .getID: result = .unsupported
                case .complete(let status): result = status
                }
                harness.device.pushUsed(id: head, length: request.complete(result))
            }
            while let used = harness.driver.reapUsed() {
                let entry = outstanding.removeValue(forKey: used.id)
                let (type, expected) = try #require(entry)
                #expect(harness.encoder.status(head: used.id) == expected.rawValue)
                #expect(used.len == (type == .read && expected == .ok ? 513 : 1))
                harness.driver.freeChain(head: used.id)
                answered += 1
            }
        }
        #expect(outstanding.isEmpty)
        #expect(harness.driver.freeCount == BlkHarness.queueSize)
    }
}

extension Result {
    fileprivate var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
