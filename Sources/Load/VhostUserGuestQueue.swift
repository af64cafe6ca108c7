import CStrataShim
import Glibc
import StrataDevices
import StrataRuntime

/// The built-in guest on a vhost-user back end: one `VirtioBlkGuest` in the shared memory, on its
/// queue executor. It publishes and kicks as a guest's virtio-blk driver does, and sleeps on the
/// call eventfd (read through the executor's ring) while nothing has completed, so what it
/// measures includes the notifications both ways, as a VM's would.
actor VhostUserGuestQueue {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    nonisolated let index: Int
    nonisolated let queue: SplitVirtqueue
    private let notifiers: Notifiers
    nonisolated var kickFD: Int32 { notifiers.kick }
    nonisolated var callFD: Int32 { notifiers.call }
    nonisolated let executor: QueueExecutor
    private let guest: VirtioBlkGuest

    /// The queue's two eventfds and the word the call eventfd is read into, closed and freed with
    /// the queue (a class, not an actor deinit: see VirtioBlkDevice's storage). `@unchecked
    /// Sendable`: immutable apart from the buffer, which only the queue's ring writes.
    private final class Notifiers: @unchecked Sendable {
        let kick: Int32
        let call: Int32
        let buffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)

        init() throws(SystemError) {
            let kick = strata_eventfd_create()
            guard kick >= 0 else { throw SystemError("eventfd", errno: -kick) }
            let call = strata_eventfd_create()
            guard call >= 0 else {
                close(kick)
                throw SystemError("eventfd", errno: -call)
            }
            self.kick = kick
            self.call = call
        }

        deinit {
            buffer.deallocate()
            close(kick)
            close(call)
        }
    }
    /// Set by `abandon`: the back end stopped answering; requests in flight count as lost.
    private var abandoned = false

    init(executor: QueueExecutor, index: Int, guest: VirtioBlkGuest) throws(SystemError) {
        unownedExecutor = executor.asUnownedSerialExecutor()
        self.executor = executor
        self.index = index
        self.guest = guest
        queue = guest.queue
        notifiers = try Notifiers()
    }

    /// Runs until `opsLimit` requests completed or the deadline passed and everything in flight is
    /// back, then reports.
    func run(opsLimit: Int?, deadline: RunDeadline) async -> GuestQueueResult {
        guest.opsLimit = opsLimit ?? .max
        if guest.refill(nowNs: CycleClock.now()) > 0 { kick() }
        while !guest.isDone && !abandoned {
            let nowNs = CycleClock.now()
            let reaped = guest.reap(nowNs: nowNs)
            if nowNs >= deadline.ns { guest.stopped = true }
            if guest.refill(nowNs: nowNs) > 0 { kick() }
            if reaped > 0 || guest.isDone { continue }
            // Nothing came back: ask for an interrupt, look once more, then sleep on it.
            guest.requestInterrupts(true)
            if guest.hasCompletions() {
                guest.requestInterrupts(false)
                continue
            }
            let fd = callFD
            let buffer = notifiers.buffer
            let result = await executor.perform { io_uring_prep_read($0, fd, buffer, 8, 0) }
            guest.requestInterrupts(false)
            if result < 0 && result != -EINTR { break }
        }
        return guest.finalResult()
    }

    private func kick() {
        if guest.needsKick() { _ = strata_eventfd_signal(kickFD) }
    }

    /// Gives up on the back end: the run ends with what came back (called after the deadline's
    /// grace, when the back end may be gone).
    func abandon() {
        abandoned = true
        _ = strata_eventfd_signal(callFD)
    }
}
