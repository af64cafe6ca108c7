import Histogram
import StrataDevices
import StrataGraph

/// The driver side of one virtio-blk queue: a split virtqueue, request slots and data buffers laid
/// out in guest memory from `base`, and `queueDepth` requests kept in flight from a seeded stream,
/// each measured from publish to reap (and checked, in verify mode). Who serves the queue is the
/// caller's business: a device model in the same process (`GuestDriverQueue`) or a vhost-user back
/// end in another (`VhostUserGuestQueue`).
///
/// Everything a request needs — descriptors, header and status slot, data buffer, bookkeeping — is
/// allocated once, here. Not Sendable: it lives on one executor with whoever drives it.
final class VirtioBlkGuest {
    let spec: WorkloadSpec
    let memory: GuestMemory
    let queue: SplitVirtqueue
    private(set) var driver: VirtqueueDriver
    private let encoder: VirtioBlkRequestEncoder
    private var stream: RequestStream
    private(set) var result: GuestQueueResult
    private let sectorsPerBlock: UInt64

    // Per descriptor head, while its request is in flight.
    private let submitNsByHead: UnsafeMutableBufferPointer<UInt64>
    private let blockByHead: UnsafeMutableBufferPointer<UInt64>
    private let bufferByHead: UnsafeMutableBufferPointer<Int32>
    private let operationByHead: UnsafeMutableBufferPointer<BlockOperation>
    private let generationByHead: UnsafeMutableBufferPointer<UInt32>
    // Data buffers: one block per chain slot (`bufferIndex`).
    private let dataArea: UInt64
    /// Chains not in flight. Every chain is taken off the driver's free list once, at the start,
    /// and stays allocated: taking and returning one per request would rewrite the free-list link
    /// in its last descriptor each time, moving the line to this CPU and away from the device's.
    private var freeHeads: [UInt16] = []
    // Verify mode: the generation last written to each block, and the blocks in flight.
    private var generations: [UInt32]
    private var blocksInFlight: Set<UInt64> = []

    private(set) var inFlight = 0
    private(set) var issued = 0
    var opsLimit = Int.max
    /// The run is over: nothing more is published.
    var stopped = false
    /// Graph switches seen on the serving queue, newest last (in-process devices only).
    private var recentSwitches: [(version: UInt64, timeNs: UInt64)] = []
    /// Requests submitted after the latest switch crossed none: the common case checks only this.
    private var latestSwitchNs: UInt64 = 0

    /// Where things go in a queue's stretch of guest memory, and how long the stretch is.
    struct Layout {
        var queueSize: Int
        var slotArea: UInt64
        var dataArea: UInt64
        var byteCount: UInt64
    }

    /// The layout of a queue for `spec` from guest address `base` (page aligned).
    static func layout(for spec: WorkloadSpec, at base: UInt64) throws -> Layout {
        // Three descriptors per request (header, data, status), each chain on a 64-byte line of
        // four (see VirtqueueDriver's alignedChainLength).
        var queueSize = 1
        while queueSize < 4 * spec.queueDepth { queueSize *= 2 }
        guard queueSize <= SplitVirtqueue.maxSize, let rings = SplitVirtqueue.Layout(size: queueSize, at: base) else {
            throw GraphError.badEdit("queue depth \(spec.queueDepth) needs more descriptors than a virtqueue holds")
        }
        let pageSize = UInt64(GuestMemory.pageSize)
        func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64 { (value + alignment - 1) / alignment * alignment }
        let slotArea = alignUp(rings.end, 64)
        let dataArea = alignUp(slotArea + UInt64(VirtioBlkRequestEncoder.slotAreaByteCount(queueSize: queueSize)), pageSize)
        // One data buffer per chain slot (see `bufferIndex`), so a slot's chain never changes.
        let end = alignUp(dataArea + UInt64(queueSize / VirtqueueDriver.descriptorsPerLine * spec.blockSizeBytes), pageSize)
        return Layout(queueSize: queueSize, slotArea: slotArea, dataArea: dataArea, byteCount: end - base)
    }

    init(spec: WorkloadSpec, memory: GuestMemory, base: UInt64, capacityBytes: UInt64, queueIndex: Int, queueCount: Int,
         eventIndex: Bool = false) throws {
        precondition(spec.queueDepth > 0 && spec.blockSizeBytes % VirtioBlk.sectorSize == 0)
        self.spec = spec
        self.memory = memory
        stream = RequestStream(spec: spec, capacityBytes: capacityBytes, queueIndex: queueIndex, queueCount: queueCount)
        result = GuestQueueResult(queueIndex: queueIndex)
        sectorsPerBlock = UInt64(spec.blockSizeBytes / VirtioBlk.sectorSize)
        let layout = try Self.layout(for: spec, at: base)
        dataArea = layout.dataArea
        queue = try SplitVirtqueue(memory: memory, size: layout.queueSize, at: base)
        driver = VirtqueueDriver(queue: queue, eventIndex: eventIndex, alignedChainLength: 3)
        encoder = try VirtioBlkRequestEncoder(memory: memory, queueSize: layout.queueSize, slotArea: layout.slotArea)
        while let head = driver.allocateChain(length: 3) {
            // Only the chains on lines of their own: the rest of the table stays unused.
            guard Int(head) % VirtqueueDriver.descriptorsPerLine == 0 else { break }
            freeHeads.append(head)
        }
        precondition(freeHeads.count >= spec.queueDepth, "\(freeHeads.count) chains for a queue depth of \(spec.queueDepth)")
        freeHeads.reverse()  // the lowest heads first

        submitNsByHead = .allocate(capacity: layout.queueSize)
        submitNsByHead.initialize(repeating: 0)
        blockByHead = .allocate(capacity: layout.queueSize)
        blockByHead.initialize(repeating: 0)
        bufferByHead = .allocate(capacity: layout.queueSize)
        bufferByHead.initialize(repeating: -1)
        operationByHead = .allocate(capacity: layout.queueSize)
        operationByHead.initialize(repeating: .read)
        generationByHead = .allocate(capacity: layout.queueSize)
        generationByHead.initialize(repeating: 0)
        if spec.verify {
            guard stream.blockCount <= 1 << 26 else {
                throw GraphError.badEdit("--verify keeps one counter per block: \(stream.blockCount) blocks is more than 2^26; use a larger --bs or a smaller device")
            }
            generations = Array(repeating: 0, count: Int(stream.blockCount))
            blocksInFlight.reserveCapacity(spec.queueDepth * 2)
        } else {
            generations = []
        }
    }

    deinit {
        submitNsByHead.deallocate()
        blockByHead.deallocate()
        bufferByHead.deallocate()
        operationByHead.deallocate()
        generationByHead.deallocate()
    }

    /// Whether the run is over and nothing is left in flight.
    var isDone: Bool { inFlight == 0 && (stopped || issued >= opsLimit) }

    /// The result so far; requests still in flight count as lost.
    func finalResult() -> GuestQueueResult {
        var final = result
        final.lost = inFlight
        return final
    }

    /// Graph switches the serving queue installed since the last call (in-process devices).
    func noteSwitches(_ new: [(version: UInt64, timeNs: UInt64)]) {
        recentSwitches.append(contentsOf: new)
        latestSwitchNs = recentSwitches.last?.timeNs ?? 0
        if recentSwitches.count > 4 { recentSwitches.removeFirst(recentSwitches.count - 4) }
    }

    /// Publishes requests until `queueDepth` are in flight, unless the run is over; returns how
    /// many it published.
    @discardableResult
    /// Publishes requests until the queue is full; the device sees them all at one avail.idx store.
    func refill(nowNs: UInt64) -> Int {
        var published = 0
        while inFlight < spec.queueDepth && !stopped && issued < opsLimit {
            guard stageNext(nowNs: nowNs) else { break }
            published += 1
        }
        if published > 0 { driver.publishStaged() }
        return published
    }

    private func stageNext(nowNs: UInt64) -> Bool {
        var (operation, block) = stream.next()
        if spec.verify {
            var attempts = 0
            while blocksInFlight.contains(block) {
                attempts += 1
                if attempts > 64 { return false }
                (operation, block) = stream.next()
            }
            blocksInFlight.insert(block)
        }
        guard let head = freeHeads.popLast() else {
            if spec.verify { blocksInFlight.remove(block) }
            return false
        }
        let buffer = Self.bufferIndex(head: head)
        let address = dataArea + UInt64(Int(buffer) * spec.blockSizeBytes)
        var generation: UInt32 = 0
        if spec.verify {
            if operation == .write {
                generations[Int(block)] &+= 1
                generation = generations[Int(block)]
                VerifyPattern.fill(memory.translate(address: address, length: UInt64(spec.blockSizeBytes))!, count: spec.blockSizeBytes,
                                   seed: spec.seed, block: block, generation: generation)
            } else {
                generation = generations[Int(block)]
            }
        }
        encoder.write(head: head, into: driver, type: operation == .read ? .read : .write, sector: block * sectorsPerBlock,
                      dataAddress: address, dataLength: UInt32(spec.blockSizeBytes))
        let index = Int(head)
        submitNsByHead[index] = nowNs
        blockByHead[index] = block
        bufferByHead[index] = buffer
        operationByHead[index] = operation
        generationByHead[index] = generation
        driver.stage(head: head)
        inFlight += 1
        issued += 1
        return true
    }

    /// The data buffer of the chain at `head`: chains sit one per 64-byte line of descriptors
    /// (`alignedChainLength`), so each line's chain has a buffer of its own and is published again
    /// with the same descriptors, written once; only the header changes per request.
    static func bufferIndex(head: UInt16) -> Int32 {
        precondition(Int(head) % VirtqueueDriver.descriptorsPerLine == 0, "a chain off its line: head \(head)")
        return Int32(Int(head) / VirtqueueDriver.descriptorsPerLine)
    }

    /// Records a request that was in flight when its queue switched graph versions.
    private func noteAcrossSwitch(submitNs: UInt64, nowNs: UInt64, latencyNs: UInt64) {
        for (version, switchNs) in recentSwitches where submitNs < switchNs && nowNs >= switchNs {
            let seen = result.acrossSwitch[version] ?? (0, 0)
            result.acrossSwitch[version] = (max(seen.maxLatencyNs, latencyNs), seen.count + 1)
        }
    }

    /// Takes every completed request off the used ring; returns how many.
    @discardableResult
    func reap(nowNs: UInt64) -> Int {
        var reaped = 0
        while let (id, _) = driver.reapUsed() {
            let index = Int(id)
            guard bufferByHead[index] >= 0 else {
                // A head the device returned twice, or never had: a broken back end.
                result.failed += 1
                continue
            }
            reaped += 1
            let latencyNs = nowNs &- submitNsByHead[index]
            let status = encoder.status(head: id)
            let operation = operationByHead[index]
            let buffer = bufferByHead[index]
            _ = result.histogram.record(max(latencyNs, 1))
            result.ops += 1
            if operation == .read { result.reads += 1 } else { result.writes += 1 }
            result.bytes &+= UInt64(spec.blockSizeBytes)
            if status != VirtioBlkStatus.ok.rawValue { result.failed += 1 }
            if spec.verify {
                let block = blockByHead[index]
                if operation == .read, status == VirtioBlkStatus.ok.rawValue, generationByHead[index] > 0 {
                    let address = dataArea + UInt64(Int(buffer) * spec.blockSizeBytes)
                    if !VerifyPattern.matches(memory.translate(address: address, length: UInt64(spec.blockSizeBytes))!, count: spec.blockSizeBytes,
                                              seed: spec.seed, block: block, generation: generationByHead[index]) {
                        result.verifyFailures += 1
                    }
                }
                blocksInFlight.remove(block)
            }
            if submitNsByHead[index] < latestSwitchNs { noteAcrossSwitch(submitNs: submitNsByHead[index], nowNs: nowNs, latencyNs: latencyNs) }
            bufferByHead[index] = -1
            freeHeads.append(id)
            inFlight -= 1
        }
        return reaped
    }

    // MARK: Notifications, for a device in another process

    /// Whether the device returned something not yet reaped.
    func hasCompletions() -> Bool { driver.hasUsed() }

    /// Whether the device wants a kick for the chains published since the last call.
    func needsKick() -> Bool { driver.needsNotification() }

    /// Asks for an interrupt on the next completion (then reap again before sleeping), or stops
    /// asking while polling anyway.
    func requestInterrupts(_ enabled: Bool) {
        if driver.eventIndex {
            if enabled { driver.setUsedEvent(driver.nextUsedIndex) }
        } else {
            driver.suppressUsedNotifications(!enabled)
        }
    }
}
