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

/// The built-in guest on an in-process device: one `VirtioBlkGuest` in anonymous memory, served by
/// a `VirtioBlkDevice` of the same queue.
///
/// Request tasks poll the device in run-to-completion style (as SPDK's vhost pollers do): each
/// services the oldest available request, reaps what completed, and publishes a replacement, so
/// the ring holds `queueDepth` requests at all times.
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
    private let guest: VirtioBlkGuest
    private var deadline = RunDeadline(ns: .max)
    private var switchesSeen = 0
    /// Most requests one loop serves between two clock readings.
    private static let batchLimit = 8
    private var runningLoops = 0
    private var loopsDone: CheckedContinuation<Void, Never>?
    /// Loops that found every request already taken by other loops: they wait for a completion to
    /// publish a new one rather than spin on yields, which kept the queue thread busy for the
    /// whole of a run on a slow remote node (74% of the process's CPU over rbd).
    private var parkedLoops: [UnsafeContinuation<Void, Never>] = []

    init(queue: QueueContext, backendName: String, spec: WorkloadSpec, capacityBytes: UInt64, queueCount: Int) throws {
        self.queue = queue
        self.spec = spec
        let layout = try VirtioBlkGuest.layout(for: spec, at: 0)
        memory = try GuestMemory(size: Int(layout.byteCount), numaNode: queue.executor.numaNode)
        do {
            guest = try VirtioBlkGuest(spec: spec, memory: memory, base: 0, capacityBytes: capacityBytes, queueIndex: queue.index,
                                       queueCount: queueCount)
        } catch {
            memory.deallocate()
            throw error
        }
        device = VirtioBlkDevice(queue: queue, backendName: backendName, capacityBytes: capacityBytes, virtqueue: guest.queue)
    }

    deinit {
        memory.deallocate()
    }

    /// Runs until `opsLimit` requests completed or the deadline passed, then reports.
    func run(on device: isolated VirtioBlkDevice, opsLimit: Int?, deadline: RunDeadline?) async -> GuestQueueResult {
        guest.opsLimit = opsLimit ?? .max
        self.deadline = deadline ?? RunDeadline(ns: .max)
        // Every loop may park at once: grown later, the list would allocate in the steady state.
        parkedLoops.reserveCapacity(spec.queueDepth)
        guest.refill(nowNs: CycleClock.now())
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
        guest.reap(nowNs: CycleClock.now())
        return guest.finalResult()
    }

    private func loopFinished(device: isolated VirtioBlkDevice) {
        // The run is ending: parked loops find that out and finish too.
        wakeParkedLoops(parkedLoops.count)
        runningLoops -= 1
        if runningLoops == 0 {
            loopsDone?.resume()
            loopsDone = nil
        }
    }

    private func wakeParkedLoops(_ count: Int) {
        for _ in 0..<min(count, parkedLoops.count) { parkedLoops.removeLast().resume() }
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
            if device.switchCount != switchesSeen {
                guest.noteSwitches(device.switches(after: switchesSeen))
                switchesSeen = device.switchCount
            }
            guest.reap(nowNs: nowNs)
            if nowNs >= deadline.ns { guest.stopped = true }
            guest.refill(nowNs: nowNs)
            if served == 0 {
                // Nothing left in the ring: the run is ending, and whoever serves the last requests reaps them.
                if guest.stopped || guest.issued >= guest.opsLimit || guest.inFlight == 0 { return }
                // Every published request is being served by another loop.
                await withUnsafeContinuation { parkedLoops.append($0) }
                continue
            }
            // Each completion published a replacement: as many parked loops may take one.
            wakeParkedLoops(served)
            sinceYield += served
            // Let control messages (graph switches) in promptly, and other request tasks in turn.
            if queue.executor.hasPendingRemoteJobs || sinceYield >= spec.queueDepth {
                sinceYield = 0
                await queue.executor.yield()
            }
        }
    }
}
