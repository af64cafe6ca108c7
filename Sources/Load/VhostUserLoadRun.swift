import CStrataShim
import Glibc
import StrataDevices
import StrataGraph
import StrataRuntime
import Synchronization

/// The built-in guest load against a vhost-user-blk back end in another process (`strata bench
/// --vhost-user SOCKET`): the front end negotiates over the socket, shares one memfd holding every
/// queue's rings and buffers, and drives virtqueue i from queue executor i.
public enum VhostUserLoadRun {
    /// How long past the deadline a run waits for requests still in flight before it counts them
    /// as lost (a back end that died or hangs).
    static let graceNs: UInt64 = 10_000_000_000

    public static func run(socketPath: String, control: QueueExecutor, queues: [QueueContext], spec: WorkloadSpec,
                           length: RunLength) async throws -> LoadReport {
        try await Task(executorPreference: control) {
            try await runOnControl(socketPath: socketPath, control: control, queues: queues, spec: spec, length: length)
        }.value
    }

    private static func runOnControl(socketPath: String, control: QueueExecutor, queues: [QueueContext], spec: WorkloadSpec,
                                     length: RunLength) async throws -> LoadReport {
        let frontEnd = try VhostUserFrontEnd(path: socketPath)
        let device = try await frontEnd.negotiate(queues: queues.count)
        guard device.capacityBytes >= UInt64(spec.blockSizeBytes) else {
            throw VhostUserProtocolErrorText("the vhost-user device is \(device.capacityBytes) bytes, smaller than one \(spec.blockSizeBytes)-byte block")
        }
        if device.readOnly && spec.mode.writes {
            throw VhostUserProtocolErrorText("the vhost-user device is read-only; use --rw read or randread")
        }
        // One memfd for all queues: each queue's stretch page aligned, one after the other.
        var bases: [UInt64] = []
        var total: UInt64 = 0
        for _ in queues {
            bases.append(total)
            total += try VirtioBlkGuest.layout(for: spec, at: total).byteCount
        }
        let memfd = strata_memfd_create("strata-bench-guest")
        guard memfd >= 0 else { throw SystemError("memfd_create", errno: -memfd) }
        defer { close(memfd) }
        guard ftruncate(memfd, off_t(total)) == 0 else { throw SystemError("ftruncate guest memory", errno: errno) }
        let mapped = mmap(nil, Int(total), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0)
        guard let host = mapped, host != UnsafeMutableRawPointer(bitPattern: -1) else { throw SystemError("mmap guest memory", errno: errno) }
        defer { munmap(host, Int(total)) }
        let memory = GuestMemory(regions: [GuestMemory.Region(guestAddress: 0, size: total, userAddress: UInt64(UInt(bitPattern: host)), host: host)])
        defer { memory.deallocate() }
        try await frontEnd.setMemory(fd: memfd, size: total, host: host)

        var guestQueues: [VhostUserGuestQueue] = []
        for (index, queue) in queues.enumerated() {
            let guest = try VirtioBlkGuest(spec: spec, memory: memory, base: bases[index], capacityBytes: device.capacityBytes,
                                           queueIndex: index, queueCount: queues.count, eventIndex: device.eventIndex)
            let guestQueue = try VhostUserGuestQueue(executor: queue.executor, index: index, guest: guest)
            try await frontEnd.startVring(index, queue: guestQueue.queue, kickFD: guestQueue.kickFD, callFD: guestQueue.callFD)
            guestQueues.append(guestQueue)
        }

        let clock = MonotonicClock()
        let cpuStart = LoadRun.processCPUTimeNs()
        let startNs = clock.nowNs
        CycleClock.calibrate()
        let cycleEndNs: UInt64 = if case .seconds(let seconds) = length { CycleClock.now() + UInt64(seconds * 1e9) } else { .max }
        let deadline = RunDeadline(ns: cycleEndNs)
        let opsLimit: Int? = if case .opsPerQueue(let ops) = length { ops } else { nil }
        let started = guestQueues
        let finished = RunFinished()
        // Wakes a queue stuck on a back end that stopped answering, once the grace has passed;
        // checks ten times a second so it ends with the run.
        let watchdog: Task<Void, Never>? = if case .seconds(let seconds) = length {
            Task(executorPreference: control) {
                let giveUpNs = startNs + UInt64(seconds * 1e9) + graceNs
                while !finished.flag.load(ordering: .acquiring) {
                    if MonotonicClock.now() >= giveUpNs {
                        for guestQueue in started { await guestQueue.abandon() }
                        return
                    }
                    await control.sleep(untilNs: MonotonicClock.now() + 100_000_000)
                }
            }
        } else { nil }
        // Not child tasks of this one: they would inherit its preference for `control` and, after
        // each wait on the call eventfd, resume there and hop back (two cross-thread wakeups).
        let runs = guestQueues.map { guestQueue in
            ThreadAffineExecutors.startTask(serving: guestQueue.executor) { await guestQueue.run(opsLimit: opsLimit, deadline: deadline) }
        }
        var results: [GuestQueueResult] = []
        for run in runs { results.append(await run.value) }
        finished.flag.store(true, ordering: .releasing)
        await watchdog?.value
        let endNs = clock.nowNs
        let cpuNs = LoadRun.processCPUTimeNs() - cpuStart
        // Stopped before the memory goes: the back end must not touch it afterwards.
        for index in guestQueues.indices { _ = try? await frontEnd.stopVring(index) }
        return LoadRun.makeReport(results: results, applied: [], spec: spec, seconds: Double(endNs - startNs) / 1e9, cpuNs: cpuNs,
                                  graph: ["vhost-user-blk \(socketPath) (\(device.capacityBytes) bytes, \(queues.count) queues)"],
                                  crossings: Array(repeating: 0, count: results.count))
    }
}

/// Set once every queue has reported.
private final class RunFinished: Sendable {
    let flag = Atomic(false)
}

/// A vhost-user run that cannot start, in words.
struct VhostUserProtocolErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
