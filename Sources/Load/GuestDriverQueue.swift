import Histogram
import StrataDevices
import StrataGraph
import StrataRuntime

/// One queue's result after a run.
struct GuestQueueResult: Sendable {
    var queueIndex: Int
    var ops = 0
    var reads = 0
    var writes = 0
    var failed = 0
    /// Requests published and never completed: any is a bug (a request lost on a graph switch).
    var lost = 0
    var verifyFailures = 0
    var bytes: UInt64 = 0
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    /// For each graph version switched in during the run: the worst latency of the requests that
    /// were in flight across the switch on this queue, and how many there were.
    var acrossSwitch: [UInt64: (maxLatencyNs: UInt64, count: Int)] = [:]
}

/// The built-in guest: a virtio-blk driver for one queue that keeps `queueDepth` requests in the
/// virtqueue, drawn from a seeded stream, and measures each from publish to reap.
///
/// Request tasks poll the device in run-to-completion style (as SPDK's vhost pollers do): each
/// services the oldest available request, reaps what completed, and publishes a replacement, so
/// the ring holds `queueDepth` requests at all times. Everything a request needs — descriptors,
/// header and status slot, data buffer, bookkeeping — is allocated once, here.
///
/// The guest runs isolated to its device queue's actor (`isolated VirtioBlkDevice` parameters), as
/// a guest's vCPU and a polling device share one core: publishing, servicing and reaping a request
/// then cost calls, not executor switches. `@unchecked Sendable`: every mutable field is touched
/// only by code isolated to `device`, hence on one executor, one job at a time.
final class GuestDriverQueue: @unchecked Sendable {
    let queue: QueueContext
    let device: VirtioBlkDevice
    private let spec: WorkloadSpec
    private let memory: GuestMemory
    private var driver: VirtqueueDriver
    private let encoder: VirtioBlkRequestEncoder
    private var stream: RequestStream
    private var result: GuestQueueResult
    private let sectorsPerBlock: UInt64

    // Per descriptor head, while its request is in flight.
    private let submitNsByHead: UnsafeMutableBufferPointer<UInt64>
    private let blockByHead: UnsafeMutableBufferPointer<UInt64>
    private let bufferByHead: UnsafeMutableBufferPointer<Int32>
    private let operationByHead: UnsafeMutableBufferPointer<BlockOperation>
    private let generationByHead: UnsafeMutableBufferPointer<UInt32>
    // Data buffers: guest addresses of `queueDepth` blocks, handed out from a stack.
    private let dataArea: UInt64
    private var freeBuffers: [Int32]
    // Verify mode: the generation last written to each block, and the blocks in flight.
    private var generations: [UInt32]
    private var blocksInFlight: Set<UInt64> = []

    private var inFlight = 0
    private var issued = 0
    private var opsLimit = Int.max
    private var deadline = RunDeadline(ns: .max)
    private var stopped = false
    private var switchesSeen = 0
    private var recentSwitches: [(version: UInt64, timeNs: UInt64)] = []
    /// Requests submitted after the latest switch crossed none: the common case checks only this.
    private var latestSwitchNs: UInt64 = 0
    /// Most requests one loop serves between two clock readings.
    private static let batchLimit = 8
    private var runningLoops = 0
    private var loopsDone: CheckedContinuation<Void, Never>?

    init(queue: QueueContext, backendName: String, spec: WorkloadSpec, capacityBytes: UInt64, queueCount: Int) throws {
        precondition(spec.queueDepth > 0 && spec.blockSizeBytes % VirtioBlk.sectorSize == 0)
        self.queue = queue
        self.spec = spec
        stream = RequestStream(spec: spec, capacityBytes: capacityBytes, queueIndex: queue.index, queueCount: queueCount)
        result = GuestQueueResult(queueIndex: queue.index)
        sectorsPerBlock = UInt64(spec.blockSizeBytes / VirtioBlk.sectorSize)

        // Three descriptors per request: header, data, status.
        var queueSize = 1
        while queueSize < 3 * spec.queueDepth { queueSize *= 2 }
        guard queueSize <= SplitVirtqueue.maxSize, let layout = SplitVirtqueue.Layout(size: queueSize, at: 0) else {
            throw GraphError.badEdit("queue depth \(spec.queueDepth) needs more descriptors than a virtqueue holds")
        }
        let pageSize = UInt64(GuestMemory.pageSize)
        func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64 { (value + alignment - 1) / alignment * alignment }
        let slotArea = alignUp(layout.end, 64)
        dataArea = alignUp(slotArea + UInt64(VirtioBlkRequestEncoder.slotAreaByteCount(queueSize: queueSize)), pageSize)
        let totalBytes = alignUp(dataArea + UInt64(spec.queueDepth * spec.blockSizeBytes), pageSize)
        memory = try GuestMemory(size: Int(totalBytes), numaNode: queue.executor.numaNode)
        let virtqueue = try SplitVirtqueue(memory: memory, size: queueSize, at: 0)
        driver = VirtqueueDriver(queue: virtqueue)
        encoder = try VirtioBlkRequestEncoder(memory: memory, queueSize: queueSize, slotArea: slotArea)
        device = VirtioBlkDevice(queue: queue, backendName: backendName, capacityBytes: capacityBytes, virtqueue: virtqueue)

        submitNsByHead = .allocate(capacity: queueSize)
        submitNsByHead.initialize(repeating: 0)
        blockByHead = .allocate(capacity: queueSize)
        blockByHead.initialize(repeating: 0)
        bufferByHead = .allocate(capacity: queueSize)
        bufferByHead.initialize(repeating: -1)
        operationByHead = .allocate(capacity: queueSize)
        operationByHead.initialize(repeating: .read)
        generationByHead = .allocate(capacity: queueSize)
        generationByHead.initialize(repeating: 0)
        freeBuffers = (0..<Int32(spec.queueDepth)).reversed()
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
        memory.deallocate()
        submitNsByHead.deallocate()
        blockByHead.deallocate()
        bufferByHead.deallocate()
        operationByHead.deallocate()
        generationByHead.deallocate()
    }

    /// Runs until `opsLimit` requests completed or the deadline passed, then reports.
    func run(on device: isolated VirtioBlkDevice, opsLimit: Int?, deadline: RunDeadline?) async -> GuestQueueResult {
        self.opsLimit = opsLimit ?? .max
        self.deadline = deadline ?? RunDeadline(ns: .max)
        refill(nowNs: CycleClock.now())
        // Unstructured tasks, not a task group: a child task's status records make every actor hop
        // look for an executor preference (measured: a fifth of the CPU per request).
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            runningLoops = spec.queueDepth
            loopsDone = continuation
            for _ in 0..<spec.queueDepth {
                // Even a nil preference marks the task as having one, which costs a locked status-record
                // walk on every hop: pass one only where it is needed.
                if let preference = ThreadAffineExecutors.preference(for: queue.executor) {
                    Task(executorPreference: preference) { await self.requestLoop(device: device) }
                } else {
                    Task { await self.requestLoop(device: device) }
                }
            }
        }
        reap(nowNs: CycleClock.now())
        result.lost = inFlight
        return result
    }

    private func loopFinished(device: isolated VirtioBlkDevice) {
        runningLoops -= 1
        if runningLoops == 0 {
            loopsDone?.resume()
            loopsDone = nil
        }
    }

    private func requestLoop(device: isolated VirtioBlkDevice) async {
        defer { loopFinished(device: device) }
        var sinceYield = 0
        while true {
            // Serve what completes synchronously in a batch, as a device does on a kick, up to the
            // first request that must wait; one clock reading then stamps the batch's completions.
            var served = 0
            var step = device.serviceNext()
            while step == .completed && served < Self.batchLimit {
                served += 1
                step = device.serviceNext()
            }
            if case .pending(let head) = step {
                await device.finish(head: head)
                served += 1
            }
            // Latency is measured on the cycle clock; the injectable one is for timing logic.
            let nowNs = CycleClock.now()
            if device.switchCount != switchesSeen { noteSwitches(device: device, count: device.switchCount) }
            reap(nowNs: nowNs)
            if nowNs >= deadline.ns { stopped = true }
            refill(nowNs: nowNs)
            if served == 0 {
                // Nothing left in the ring: the run is ending, and whoever serves the last requests reaps them.
                if stopped || issued >= opsLimit || inFlight == 0 { return }
                await queue.executor.yield()
                continue
            }
            sinceYield += served
            // Let control messages (graph switches) in promptly, and other request tasks in turn.
            if queue.executor.hasPendingRemoteJobs || sinceYield >= spec.queueDepth {
                sinceYield = 0
                await queue.executor.yield()
            }
        }
    }

    private func noteSwitches(device: isolated VirtioBlkDevice, count: Int) {
        let new = device.switches(after: switchesSeen)
        switchesSeen = count
        recentSwitches.append(contentsOf: new)
        latestSwitchNs = recentSwitches.last?.timeNs ?? 0
        if recentSwitches.count > 4 { recentSwitches.removeFirst(recentSwitches.count - 4) }
    }

    /// Publishes requests until `queueDepth` are in flight, unless the run is over.
    private func refill(nowNs: UInt64) {
        while inFlight < spec.queueDepth && !stopped && issued < opsLimit {
            guard publishNext(nowNs: nowNs) else { return }
        }
    }

    private func publishNext(nowNs: UInt64) -> Bool {
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
        guard let buffer = freeBuffers.popLast() else { return false }
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
        guard let head = encoder.encode(into: &driver, type: operation == .read ? .read : .write, sector: block * sectorsPerBlock,
                                        dataAddress: address, dataLength: UInt32(spec.blockSizeBytes)) else {
            freeBuffers.append(buffer)
            if spec.verify { blocksInFlight.remove(block) }
            return false
        }
        let index = Int(head)
        submitNsByHead[index] = nowNs
        blockByHead[index] = block
        bufferByHead[index] = buffer
        operationByHead[index] = operation
        generationByHead[index] = generation
        driver.publish(head: head)
        inFlight += 1
        issued += 1
        return true
    }

    /// Records a request that was in flight when its queue switched graph versions.
    private func noteAcrossSwitch(submitNs: UInt64, nowNs: UInt64, latencyNs: UInt64) {
        for (version, switchNs) in recentSwitches where submitNs < switchNs && nowNs >= switchNs {
            let seen = result.acrossSwitch[version] ?? (0, 0)
            result.acrossSwitch[version] = (max(seen.maxLatencyNs, latencyNs), seen.count + 1)
        }
    }

    /// Takes every completed request off the used ring.
    private func reap(nowNs: UInt64) {
        while let (id, _) = driver.reapUsed() {
            let index = Int(id)
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
            freeBuffers.append(buffer)
            driver.freeChain(head: id)
            inFlight -= 1
        }
    }
}
