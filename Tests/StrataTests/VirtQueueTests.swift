import StrataDevices
import StrataGraph
import StrataLoad
import Testing

/// A guest memory with a queue at its start and a data area after it. Guest addresses start well
/// above 0 so a translation that forgot the base would be caught.
private struct QueueMemory {
    static let guestBase: UInt64 = 0x1_0000_0000
    static let dataOffset: UInt64 = 0x8_0000

    let memory: GuestMemory
    let queue: SplitVirtqueue

    init(size: Int, bytes: Int = 1 << 20) throws {
        memory = try GuestMemory(guestBase: Self.guestBase, size: bytes)
        queue = try SplitVirtqueue(memory: memory, size: size, at: Self.guestBase)
    }

    var data: UInt64 { Self.guestBase + Self.dataOffset }

    func host(_ address: UInt64, _ length: UInt64 = 0) -> UnsafeMutableRawPointer? {
        memory.translate(address: address, length: length)
    }
}

/// Walks a chain to its end: the segments, or the error that stopped it.
private func walk(_ device: borrowing VirtqueueDevice, head: UInt16) -> (segments: [DescriptorChain.Segment], error: VirtqueueError?) {
    var chain = device.chain(head: head)
    var segments: [DescriptorChain.Segment] = []
    do {
        while let segment = try chain.next() { segments.append(segment) }
        return (segments, nil)
    } catch {
        // An error ends the walk for good.
        let after = try? chain.next()
        #expect(after == nil)
        return (segments, error)
    }
}

@Suite struct VirtQueueTests {
    @Test func layoutFollowsSpecSizesAndAlignment() throws {
        let layout = try #require(SplitVirtqueue.Layout(size: 256, at: 0x1000))
        #expect(layout.descriptorTable == 0x1000)
        #expect(layout.availableRing == 0x1000 + 16 * 256)
        #expect(layout.usedRing == 0x2208)  // 0x2000 + 6 + 2 * 256 = 0x2206, aligned to 4
        #expect(layout.end == 0x2208 + 6 + 8 * 256)

        let unaligned = try #require(SplitVirtqueue.Layout(size: 1, at: 0x1001))
        #expect(unaligned.descriptorTable == 0x1010)
        #expect(unaligned.availableRing == 0x1020)
        #expect(unaligned.usedRing == 0x1028)  // 0x1020 + 8 is already 4-aligned
        #expect(SplitVirtqueue.Layout(size: 32768, at: 0) != nil)

        for size in [0, 3, 6, 100, 65536, -8] { #expect(SplitVirtqueue.Layout(size: size, at: 0) == nil) }
        #expect(SplitVirtqueue.Layout(size: 8, at: UInt64.max - 64) == nil)
    }

    @Test func queueSetupRejectsBadSizeMisalignmentAndPartsOutsideMemory() throws {
        let memory = try GuestMemory(guestBase: 0x10_0000, size: 0x10000)
        defer { memory.deallocate() }
        let base: UInt64 = 0x10_0000
        func setup(size: Int = 8, table: UInt64 = base, avail: UInt64 = base + 0x100, used: UInt64 = base + 0x200) -> VirtqueueError? {
            do {
                _ = try SplitVirtqueue(memory: memory, size: size, descriptorTable: table, availableRing: avail, usedRing: used)
                return nil
            } catch { return error }
        }
        #expect(setup() == nil)
        #expect(setup(size: 6) == .invalidQueueSize)
        #expect(setup(size: 0) == .invalidQueueSize)
        #expect(setup(size: 65536) == .invalidQueueSize)
        #expect(setup(table: base + 8) == .misalignedRing)
        #expect(setup(avail: base + 0x101) == .misalignedRing)
        #expect(setup(used: base + 0x202) == .misalignedRing)
        #expect(setup(used: base + 0x10000 - 8) == .addressOutOfBounds)
        #expect(setup(table: base - 0x100) == .addressOutOfBounds)
        #expect(throws: VirtqueueError.invalidQueueSize) { try SplitVirtqueue(memory: memory, size: 12, at: base) }
        #expect(throws: VirtqueueError.addressOutOfBounds) { try SplitVirtqueue(memory: memory, size: 4096, at: base) }
    }

    @Test func guestMemoryTranslatesOnlyRangesFullyInside() throws {
        let base: UInt64 = 0x2000_0000
        let memory = try GuestMemory(guestBase: base, size: 10_000)
        defer { memory.deallocate() }
        #expect(Int(bitPattern: memory.hostBase) % GuestMemory.pageSize == 0)
        #expect(memory.translate(address: base, length: 10_000) == memory.hostBase)
        #expect(memory.translate(address: base + 9_999, length: 1) == memory.hostBase + 9_999)
        #expect(memory.translate(address: base + 10_000, length: 0) == memory.hostBase + 10_000)
        #expect(memory.translate(address: base + 9_999, length: 2) == nil)
        #expect(memory.translate(address: base + 10_001, length: 0) == nil)
        #expect(memory.translate(address: base - 1, length: 1) == nil)
        #expect(memory.translate(address: base, length: 10_001) == nil)
        #expect(memory.translate(address: UInt64.max, length: 1) == nil)
        #expect(memory.translate(address: base + 1, length: UInt64.max) == nil)
        #expect(memory.translate(address: UInt64.max - 4, length: 10) == nil)
        #expect(!memory.contains(address: 0, length: 1))

        #expect(memory.guestAddress(of: memory.hostBase + 123) == base + 123)
        #expect(memory.guestAddress(of: memory.hostBase + 10_001) == nil)
        #expect(memory.guestAddress(of: memory.hostBase - 1) == nil)
        // The memory is usable and starts zeroed.
        #expect(memory.hostBase.load(fromByteOffset: 9_999, as: UInt8.self) == 0)
        memory.hostBase.storeBytes(of: 0xAB, toByteOffset: 9_999, as: UInt8.self)
        #expect(memory.hostBase.load(fromByteOffset: 9_999, as: UInt8.self) == 0xAB)
    }

    @Test func requestsRoundTripPastIndexWrapAround() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var device = VirtqueueDevice(queue: setup.queue)
        let total = 70_000  // past 65535: both free-running indices wrap
        var published = 0
        var popped = 0
        var completed = 0
        var inFlight: [UInt32: UInt16] = [:]  // tag -> head, to check ids come back

        while completed < total {
            // Publish a batch of 1...8 requests: a readable and a writable buffer each.
            let batch = min(1 + published % 8, total - published)
            for _ in 0..<batch {
                guard let head = driver.allocateChain(length: 2) else { break }
                let tag = UInt32(published)
                let second = driver.nextIndex(after: head)
                driver.writeDescriptor(head, address: setup.data + UInt64(tag % 64) * 64, length: tag % 1000 + 1, flags: .next)
                driver.writeDescriptor(second, address: setup.data + 0x1_0000, length: 512, flags: .write)
                driver.publish(head: head)
                inFlight[tag] = head
                published += 1
            }
            // The device consumes everything in publication order, returning the first buffer's
            // length as the used length.
            while let head = try device.popAvail() {
                let tag = UInt32(popped)
                popped += 1
                #expect(inFlight[tag] == head)
                var chain = device.chain(head: head)
                let first = try #require(try chain.next())
                let second = try #require(try chain.next())
                #expect(try chain.next() == nil)
                #expect(!first.isDeviceWritable && second.isDeviceWritable)
                #expect(first.buffer.base == setup.host(setup.data + UInt64(tag % 64) * 64))
                #expect(first.buffer.count == Int(tag % 1000 + 1))
                #expect(second.buffer.count == 512)
                #expect(chain.totalLength == UInt64(first.buffer.count + 512))
                device.pushUsed(id: head, length: UInt32(first.buffer.count))
            }
            // The driver reaps in order: each length identifies the request.
            while let used = driver.reapUsed() {
                let tag = UInt32(completed)
                #expect(used.len == tag % 1000 + 1)
                #expect(inFlight.removeValue(forKey: tag) == used.id)
                driver.freeChain(head: used.id)
                completed += 1
            }
        }
        #expect(inFlight.isEmpty)
        #expect(driver.freeCount == 8)
        #expect(driver.publishedIndex == UInt16(total % 65536))
        #expect(device.nextAvailableIndex == UInt16(total % 65536))
        #expect(device.publishedUsedIndex == UInt16(total % 65536))
        #expect(driver.nextUsedIndex == UInt16(total % 65536))
    }

    /// With `defersUsedIndex` used elements are written at once but used.idx moves only when the
    /// device asks whether to notify: the driver sees the batch whole, never part of it.
    @Test func aDeferredUsedIndexPublishesTheBatchAtTheNotificationCheck() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var device = VirtqueueDevice(queue: setup.queue)
        device.defersUsedIndex = true
        for _ in 0..<3 {
            let allocated = driver.allocateChain(length: 1)
            let head = try #require(allocated)
            driver.writeDescriptor(head, address: setup.data, length: 512, flags: .write)
            driver.publish(head: head)
        }
        while let head = try device.popAvail() { device.pushUsed(id: head, length: 512) }
        #expect(setup.queue.loadUsedIndexAcquire() == 0)
        let early = driver.reapUsed()
        #expect(early == nil)
        let notify = device.needsNotification()
        #expect(notify)
        #expect(setup.queue.loadUsedIndexAcquire() == 3)
        var reaped = 0
        while driver.reapUsed() != nil { reaped += 1 }
        #expect(reaped == 3)
    }

    @Test func freeListReusesDescriptorsAndRefusesWhenExhausted() throws {
        let setup = try QueueMemory(size: 4)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var chain = driver.allocateChain(length: 0)
        #expect(chain == nil)
        chain = driver.allocateChain(length: 5)
        #expect(chain == nil)

        chain = driver.allocateChain(length: 3)
        let three = try #require(chain)
        let members = [three, driver.nextIndex(after: three), driver.nextIndex(after: driver.nextIndex(after: three))]
        #expect(Set(members).count == 3)
        #expect(driver.freeCount == 1)
        chain = driver.allocateChain(length: 2)
        #expect(chain == nil)
        chain = driver.allocateChain(length: 1)
        let single = try #require(chain)
        #expect(!members.contains(single))
        #expect(driver.freeCount == 0)
        chain = driver.allocateChain(length: 1)
        #expect(chain == nil)

        // freeChain follows the NEXT flags as written.
        driver.writeDescriptor(members[0], address: setup.data, length: 1, flags: .next)
        driver.writeDescriptor(members[1], address: setup.data, length: 1, flags: .next)
        driver.writeDescriptor(members[2], address: setup.data, length: 1, flags: .write)
        driver.freeChain(head: three)
        #expect(driver.freeCount == 3)
        chain = driver.allocateChain(length: 3)
        let again = try #require(chain)
        let reused = [again, driver.nextIndex(after: again), driver.nextIndex(after: driver.nextIndex(after: again))]
        #expect(Set(reused) == Set(members))

        // An indirect head is one descriptor however long its table.
        driver.writeDescriptor(single, address: setup.data, length: 64, flags: .indirect)
        driver.freeChain(head: single)
        #expect(driver.freeCount == 1)
        chain = driver.allocateChain(length: 1)
        #expect(chain == single)
    }

    @Test func walksIndirectTableAfterDirectDescriptors() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var device = VirtqueueDevice(queue: setup.queue)
        let table = setup.data + 0x4000
        let tableHost = try #require(setup.host(table, 48))
        // Entries linked out of order (0 -> 2 -> 1); a table can mix readable and writable.
        VirtqueueDescriptor(address: setup.data + 0x100, length: 512, flags: .next, next: 2).store(to: tableHost, index: 0)
        VirtqueueDescriptor(address: setup.data + 0x900, length: 1, flags: .write).store(to: tableHost, index: 1)
        VirtqueueDescriptor(address: setup.data + 0x500, length: 1024, flags: [.next, .write], next: 1).store(to: tableHost, index: 2)

        let chain = driver.allocateChain(length: 2)
        let head = try #require(chain)
        let indirect = driver.nextIndex(after: head)
        driver.writeDescriptor(head, address: setup.data, length: 16, flags: .next)
        // The device must ignore WRITE on the descriptor that refers to a table.
        driver.writeDescriptor(indirect, address: table, length: 48, flags: [.indirect, .write])
        driver.publish(head: head)

        let next = try device.popAvail()
        let popped = try #require(next)
        #expect(popped == head)
        let result = walk(device, head: popped)
        #expect(result.error == nil)
        let expected: [(UInt64, Int, Bool)] = [(setup.data, 16, false), (setup.data + 0x100, 512, false),
                                               (setup.data + 0x500, 1024, true), (setup.data + 0x900, 1, true)]
        #expect(result.segments.count == expected.count)
        for (segment, (address, length, writable)) in zip(result.segments, expected) {
            #expect(segment.buffer.base == setup.host(address))
            #expect(segment.buffer.count == length)
            #expect(segment.isDeviceWritable == writable)
        }
        device.pushUsed(id: popped, length: 1025)
        var reaped = driver.reapUsed()
        let used = try #require(reaped)
        #expect(used.id == head && used.len == 1025)
        reaped = driver.reapUsed()
        #expect(reaped == nil)
    }

    @Test func acceptsChainAsLongAsTheTable() throws {
        let setup = try QueueMemory(size: 4)
        defer { setup.memory.deallocate() }
        let device = VirtqueueDevice(queue: setup.queue)
        for index in 0..<4 {
            setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 8, flags: index < 3 ? .next : [],
                                                            next: UInt16(index + 1)), at: UInt16(index))
        }
        let result = walk(device, head: 0)
        #expect(result.error == nil)
        #expect(result.segments.count == 4)
    }

    @Test func rejectsDescriptorIndexOutOfRange() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var device = VirtqueueDevice(queue: setup.queue)
        // A head beyond the table, published through the ring.
        driver.publish(head: 8)
        let next = try device.popAvail()
        let head = try #require(next)
        #expect(walk(device, head: head).error == .descriptorIndexOutOfRange)
        #expect(walk(device, head: 0xFFFF).error == .descriptorIndexOutOfRange)
        // A next link beyond the table.
        setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 8, flags: .next, next: 8), at: 0)
        let result = walk(device, head: 0)
        #expect(result.segments.count == 1)
        #expect(result.error == .descriptorIndexOutOfRange)
    }

    @Test func rejectsLoops() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        let device = VirtqueueDevice(queue: setup.queue)
        setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 8, flags: .next, next: 0), at: 0)
        let selfLoop = walk(device, head: 0)
        #expect(selfLoop.error == .descriptorLoop)
        #expect(selfLoop.segments.count == 8)  // bounded by the table size

        setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 8, flags: .next, next: 5), at: 3)
        setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 8, flags: .next, next: 6), at: 5)
        setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 8, flags: .next, next: 5), at: 6)
        #expect(walk(device, head: 3).error == .descriptorLoop)
    }

    @Test func rejectsAddressesOutsideGuestMemory() throws {
        let setup = try QueueMemory(size: 8, bytes: 1 << 20)
        defer { setup.memory.deallocate() }
        let device = VirtqueueDevice(queue: setup.queue)
        let end = QueueMemory.guestBase + (1 << 20)
        let cases: [(UInt64, UInt32)] = [
            (end - 10, 11),                      // runs past the end
            (end, 1),                            // starts at the end
            (QueueMemory.guestBase - 1, 1),      // starts below the base
            (0, 16),                             // nowhere near
            (UInt64.max - 5, 100),               // address + length overflows 64 bits
            (QueueMemory.guestBase + 16, .max),  // length alone exceeds the memory
        ]
        for (address, length) in cases {
            setup.queue.storeDescriptor(VirtqueueDescriptor(address: address, length: length), at: 1)
            #expect(walk(device, head: 1).error == .addressOutOfBounds, "address \(address) length \(length)")
        }
        setup.queue.storeDescriptor(VirtqueueDescriptor(address: end - 10, length: 10), at: 1)
        #expect(walk(device, head: 1).error == nil)
    }

    @Test func rejectsChainLongerThan4GiB() throws {
        // 1 GiB of address space, never touched: the mapping stays virtual.
        let setup = try QueueMemory(size: 8, bytes: 1 << 30)
        defer { setup.memory.deallocate() }
        let device = VirtqueueDevice(queue: setup.queue)
        for index in 0..<5 {
            setup.queue.storeDescriptor(VirtqueueDescriptor(address: setup.data, length: 0x3FF0_0000, flags: .next,
                                                            next: UInt16(index + 1)), at: UInt16(index))
        }
        let result = walk(device, head: 0)
        #expect(result.error == .chainLengthOverflow)
        #expect(result.segments.count == 4)  // 4 * 0x3FF0_0000 < 2^32 <= 5 * 0x3FF0_0000
    }

    @Test func rejectsBadIndirectTables() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        let device = VirtqueueDevice(queue: setup.queue, maxIndirectEntries: 4)
        let table = setup.data + 0x2000
        let tableHost = try #require(setup.host(table, 256))
        for index in 0..<4 {
            VirtqueueDescriptor(address: setup.data, length: 8, flags: index < 3 ? .next : [], next: UInt16(index + 1))
                .store(to: tableHost, index: index)
        }
        func indirect(length: UInt32, flags: VirtqueueDescriptor.Flags = .indirect, address: UInt64? = nil) -> VirtqueueError? {
            setup.queue.storeDescriptor(VirtqueueDescriptor(address: address ?? table, length: length, flags: flags, next: 1), at: 0)
            return walk(device, head: 0).error
        }
        #expect(indirect(length: 64) == nil)
        #expect(walk(device, head: 0).segments.count == 4)
        #expect(indirect(length: 48) == .descriptorIndexOutOfRange)  // entry 2 links to 3, past a 3-entry table
        #expect(indirect(length: 24) == .badIndirectTable)           // not a multiple of 16
        #expect(indirect(length: 0) == .badIndirectTable)
        #expect(indirect(length: 80) == .badIndirectTable)           // 5 entries > maxIndirectEntries
        #expect(indirect(length: 16, flags: [.indirect, .next]) == .badIndirectTable)
        #expect(indirect(length: 16, address: QueueMemory.guestBase + (1 << 20) - 8) == .addressOutOfBounds)

        // Nested: an indirect descriptor inside the table.
        VirtqueueDescriptor(address: table, length: 16, flags: .indirect).store(to: tableHost, index: 1)
        #expect(indirect(length: 32) == .nestedIndirect)
        // A loop inside the table.
        VirtqueueDescriptor(address: setup.data, length: 8, flags: .next, next: 0).store(to: tableHost, index: 1)
        #expect(indirect(length: 32) == .descriptorLoop)
    }

    @Test func rejectsAvailableIndexRunningAheadOfTheRing() throws {
        let setup = try QueueMemory(size: 4)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var device = VirtqueueDevice(queue: setup.queue)
        for _ in 0..<4 { driver.publish(head: 0) }
        for _ in 0..<4 {
            let head = try device.popAvail()
            #expect(head == 0)
        }
        let next = try device.popAvail()
        #expect(next == nil)
        for _ in 0..<5 { driver.publish(head: 0) }  // 5 new entries in a ring of 4
        #expect(throws: VirtqueueError.availableIndexOverrun) { try device.popAvail() }
    }

    @Test(arguments: [
        (event: UInt16(0), new: UInt16(1), old: UInt16(0), notify: true),   // first entry asked for
        (event: 1, new: 1, old: 0, notify: false),       // asked for the second, only the first came
        (event: 5, new: 10, old: 3, notify: true),       // passed 5 on the way from 3 to 10
        (event: 10, new: 10, old: 3, notify: false),     // entry 10 not written yet
        (event: 2, new: 10, old: 3, notify: false),      // 2 was before this batch
        (event: 65535, new: 1, old: 65534, notify: true), // across the wrap
        (event: 0, new: 65535, old: 65530, notify: false),
        (event: 7, new: 7, old: 7, notify: false),       // nothing new
    ])
    func needsEventFollowsVringNeedEvent(event: UInt16, new: UInt16, old: UInt16, notify: Bool) {
        #expect(SplitVirtqueue.needsEvent(eventIndex: event, newIndex: new, oldIndex: old) == notify)
    }

    @Test func eventIndexNotificationsInBothDirections() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue, eventIndex: true)
        var device = VirtqueueDevice(queue: setup.queue, eventIndex: true)

        // Driver -> device: avail_event 0 asks for a kick at the first entry only.
        device.setAvailableEvent(0)
        var kick = driver.needsNotification()
        #expect(!kick)  // nothing published
        driver.publish(head: 0)
        kick = driver.needsNotification()
        #expect(kick)
        driver.publish(head: 1)
        kick = driver.needsNotification()
        #expect(!kick)
        device.setAvailableEvent(device.nextAvailableIndex)  // 0: the device has not consumed yet
        var next = try device.popAvail()
        #expect(next == 0)
        next = try device.popAvail()
        #expect(next == 1)
        device.setAvailableEvent(device.nextAvailableIndex)  // 2: wake me for the next one
        driver.publish(head: 2)
        driver.publish(head: 3)
        kick = driver.needsNotification()
        #expect(kick)

        // Device -> driver: used_event 2 asks for an interrupt once used entry 2 is written.
        driver.setUsedEvent(2)
        device.pushUsed(id: 0, length: 1)
        var interrupt = device.needsNotification()
        #expect(!interrupt)
        device.pushUsed(id: 1, length: 1)
        interrupt = device.needsNotification()
        #expect(!interrupt)
        device.pushUsed(id: 2, length: 1)
        interrupt = device.needsNotification()
        #expect(interrupt)
        interrupt = device.needsNotification()
        #expect(!interrupt)  // nothing new since
        driver.setUsedEvent(driver.nextUsedIndex)  // 0: everything is due
        device.pushUsed(id: 3, length: 1)
        interrupt = device.needsNotification()
        #expect(!interrupt)  // used_event 0 was passed long ago
        driver.setUsedEvent(4)
        device.pushUsed(id: 4, length: 1)
        interrupt = device.needsNotification()
        #expect(interrupt)
    }

    @Test func flagNotificationsWithoutEventIndex() throws {
        let setup = try QueueMemory(size: 8)
        defer { setup.memory.deallocate() }
        var driver = VirtqueueDriver(queue: setup.queue)
        var device = VirtqueueDevice(queue: setup.queue)
        driver.publish(head: 0)
        var kick = driver.needsNotification()
        #expect(kick)
        device.suppressAvailableNotifications(true)
        driver.publish(head: 1)
        kick = driver.needsNotification()
        #expect(!kick)
        device.suppressAvailableNotifications(false)
        driver.publish(head: 2)
        kick = driver.needsNotification()
        #expect(kick)

        device.pushUsed(id: 0, length: 0)
        var interrupt = device.needsNotification()
        #expect(interrupt)
        driver.suppressUsedNotifications(true)
        device.pushUsed(id: 1, length: 0)
        interrupt = device.needsNotification()
        #expect(!interrupt)
        driver.suppressUsedNotifications(false)
        interrupt = device.needsNotification()
        #expect(!interrupt)  // nothing new
        device.pushUsed(id: 2, length: 0)
        interrupt = device.needsNotification()
        #expect(interrupt)
    }
}
