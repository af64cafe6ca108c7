import CStrataShim
import Glibc
import StrataDevices
import StrataGraph
import StrataRuntime

/// Serves one started virtqueue on its queue executor: workers pop requests from the ring through
/// the queue's `VirtioBlkDevice`, wait for the front end's kick on the executor's io_uring when the
/// ring is empty, and signal the call eventfd when the driver wants an interrupt.
///
/// Workers take turns popping, as the NBD server's workers take turns reading the socket: the one
/// holding the turn pops and serves what completes at once; when a request must wait it passes the
/// turn on (to a waiting worker, or to a new one while there are fewer than the ring has entries)
/// and finishes that request. Steady state allocates nothing and takes no lock.
///
/// Why `@unchecked Sendable` is safe: every mutable field is touched only by functions isolated to
/// `device` (they take it as their `isolated` parameter), so only on the device's executor.
final class VhostUserVringRunner: @unchecked Sendable {
    let device: VirtioBlkDevice
    let index: Int
    private let executor: QueueExecutor
    private let log: @Sendable (String) -> Void
    private let kickFD: Int32
    private var callFD: Int32
    /// Where the kick eventfd's counter is read to; the ring writes it, so it must not move.
    private let kickBuffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private var stopping = false
    private var turnHeld = false
    private var turnWaiters: [ParkedContinuation<Bool>] = []
    private var workers = 0
    private let maxWorkers: Int
    private var allStopped: CheckedContinuation<Void, Never>?
    /// What the executor polls while this queue waits for the driver (see `popOrWait`).
    private let availablePoll: VirtqueueAvailablePoll
    /// Requests served between two looks at other work on the executor.
    private static let batchLimit = 8

    /// The descriptors stay the connection's: it closes them only after the runner stopped using
    /// them. `callFD` is -1 while there is none.
    init(device: VirtioBlkDevice, index: Int, executor: QueueExecutor, kickFD: Int32, callFD: Int32, ringSize: Int,
         log: @escaping @Sendable (String) -> Void) {
        self.device = device
        self.index = index
        self.executor = executor
        self.kickFD = kickFD
        self.callFD = callFD
        self.maxWorkers = ringSize
        self.log = log
        availablePoll = VirtqueueAvailablePoll(queue: device.splitVirtqueue)
        turnWaiters.reserveCapacity(ringSize)
    }

    deinit {
        kickBuffer.deallocate()
    }

    /// Starts the first worker; more start as requests wait.
    func start(device: isolated VirtioBlkDevice) {
        startWorker(device: device)
    }

    /// Stops popping, lets every request in flight finish and reach the used ring, and returns the
    /// available position the queue resumes from.
    func stop(device: isolated VirtioBlkDevice) async -> UInt16 {
        stopping = true
        // The worker sleeping on the kick eventfd wakes as if the front end had kicked.
        _ = strata_eventfd_signal(kickFD)
        executor.endIdlePoll(availablePoll)
        let waiters = turnWaiters
        turnWaiters.removeAll()
        for waiter in waiters { waiter.resume(returning: false) }
        if workers > 0 {
            await withCheckedContinuation { waiter in
                if workers > 0 { allStopped = waiter } else { waiter.resume() }
            }
        }
        return device.nextAvailableIndex
    }

    /// SET_VRING_CALL while the queue runs: later interrupts go to `fd` (QEMU changes it when the
    /// guest masks a vector).
    func replaceCall(_ fd: Int32, device: isolated VirtioBlkDevice) {
        callFD = fd
        // An interrupt owed before the switch must not be lost on the way.
        if fd >= 0 { _ = strata_eventfd_signal(fd) }
    }

    /// VIRTIO_BLK_F_CONFIG_WCE: the driver turned its write cache on or off.
    func setWriteCache(_ enabled: Bool) async {
        await device.setWriteCache(enabled)
    }

    private func startWorker(device: isolated VirtioBlkDevice) {
        workers += 1
        ThreadAffineExecutors.startTask(serving: executor) { [self] in await runWorker(device: self.device) }
    }

    private func runWorker(device: isolated VirtioBlkDevice) async {
        while await takeTurn(device: device) {
            let head = await popOrWait(device: device)
            passTurn(device: device)
            guard let head else { break }
            await device.finish(head: head)
            notify(device: device)
        }
        workers -= 1
        if workers == 0, let waiter = allStopped {
            allStopped = nil
            waiter.resume()
        }
    }

    private func takeTurn(device: isolated VirtioBlkDevice) async -> Bool {
        guard !stopping else { return false }
        if !turnHeld {
            turnHeld = true
            return true
        }
        return await park { waiter in
            if stopping {
                waiter.resume(returning: false)
            } else if !turnHeld {
                turnHeld = true
                waiter.resume(returning: true)
            } else {
                turnWaiters.append(waiter)
            }
        }
    }

    private func passTurn(device: isolated VirtioBlkDevice) {
        if !stopping, let next = turnWaiters.popLast() {
            next.resume(returning: true)
        } else {
            turnHeld = false
            if !stopping && workers < maxWorkers { startWorker(device: device) }
        }
    }

    /// Serves what completes at once and returns the first request that must wait; sleeps on the
    /// kick eventfd while the ring is empty. Nil once stopping (or the ring broke).
    private func popOrWait(device: isolated VirtioBlkDevice) async -> UInt16? {
        var served = 0
        while !stopping {
            switch device.serviceNext() {
            case .completed:
                served += 1
                if served >= Self.batchLimit {
                    served = 0
                    notify(device: device)
                    if executor.hasPendingRemoteJobs { await executor.yield() }
                }
            case .pending(let head):
                if served > 0 { notify(device: device) }
                return head
            case .idle:
                if served > 0 {
                    served = 0
                    notify(device: device)
                }
                if device.isBroken {
                    log("vhost-user-blk: virtqueue \(index): the driver's available index ran more than a queue ahead; the device needs a reset")
                    stopping = true
                    return nil
                }
                // First let the executor poll the ring while it spins: while the driver keeps
                // publishing within its polling window, it need not kick (kicks stay off).
                availablePoll.seenIndex = device.nextAvailableIndex
                if await executor.pollWhileIdle(availablePoll) { continue }
                if stopping { break }
                device.requestKicks(true)
                if device.hasAvailable() {
                    device.requestKicks(false)
                    continue
                }
                let fd = kickFD
                let buffer = kickBuffer
                let result = await executor.perform { io_uring_prep_read($0, fd, buffer, 8, 0) }
                device.requestKicks(false)
                if result != 8 && result != -EINTR && result != -EAGAIN {
                    log("vhost-user-blk: virtqueue \(index): reading the kick eventfd gave \(result < 0 ? String(cString: strerror(-result)) : "\(result) bytes"); the queue stops")
                    stopping = true
                    return nil
                }
            }
        }
        // Stopped in the middle of a batch: what was served must still reach used.idx.
        if served > 0 { notify(device: device) }
        return nil
    }

    private func notify(device: isolated VirtioBlkDevice) {
        if device.needsNotification() && callFD >= 0 { _ = strata_eventfd_signal(callFD) }
    }
}
