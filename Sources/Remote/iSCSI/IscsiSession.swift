import CIscsi
import Glibc
import StrataRuntime

/// What one SCSI command came back with: libiscsi's status and its task (nil when libiscsi failed
/// the command before a target answered). Whoever receives it frees the task (`release`).
struct IscsiCompletion: @unchecked Sendable {
    // @unchecked Sendable: it passes from libiscsi's callback, inside `iscsi_service` on the
    // session's executor, to the request that waits on that same executor; the task never leaves it.
    let status: scsi_status
    let task: UnsafeMutablePointer<scsi_task>?

    init(status: scsi_status, task: UnsafeMutablePointer<scsi_task>?) {
        self.status = status
        self.task = task
    }

    /// From libiscsi's callback argument.
    init(callbackStatus: Int32, task: UnsafeMutablePointer<scsi_task>?) {
        self.init(status: scsi_status(rawValue: UInt32(bitPattern: callbackStatus)), task: task)
    }

    var isGood: Bool { status == SCSI_STATUS_GOOD }
    var senseKey: scsi_sense_key? { status == SCSI_STATUS_CHECK_CONDITION ? task?.pointee.sense.key : nil }
    var ascq: Int32 { task?.pointee.sense.ascq ?? 0 }

    func release() {
        if let task { scsi_free_scsi_task(task) }
    }
}

/// One iSCSI session: a libiscsi context logged in to the LUN, owned by one queue executor.
/// libiscsi contexts are single-threaded, so every queue has a session of its own (as SPDK gives
/// each io_channel its own connection). Its socket is polled on that executor's ring and
/// `iscsi_service` runs there, so libiscsi's callbacks resume requests without leaving the thread.
///
/// Two loops drive the socket: the service loop polls for what libiscsi asks (`iscsi_which_events`)
/// with a one-second limit, so that libiscsi's timeouts, reconnect back-off and the keepalive run;
/// the writer loop, woken by new commands, polls for POLLOUT and sends them in one batch per turn,
/// while the service loop waits for replies only.
final class IscsiSession: @unchecked Sendable {
    // @unchecked Sendable: the context and every var below are touched only on `executor`'s
    // thread (`assertOwned`); other threads reach the session through `IscsiSessionHost`, an actor
    // bound to that executor.

    enum Phase: Equatable {
        case idle
        case connecting
        case ready
        case failed(String)
        case closing
        case closed
    }

    let executor: QueueExecutor
    let location: IscsiLocation
    private let context: OpaquePointer
    private let tick = RingPoll.Timeout(nanoseconds: 1_000_000_000)
    private let log: @Sendable (String) -> Void
    private(set) var phase = Phase.idle
    private var loginWaiters: [UnsafeContinuation<Void, Never>] = []
    private var parkedWriter: UnsafeContinuation<Void, Never>?
    private var runningLoops = 0
    private var loopsStopped: UnsafeContinuation<Void, Never>?
    private var logoutDone: UnsafeContinuation<Void, Never>?
    private var logoutDeadlineNs: UInt64 = 0
    private var lastKeepaliveNs: UInt64 = 0
    private var reportedFailure = false

    /// QEMU's keepalive: a NOP-Out every 5 s; more than 3 unanswered reconnects.
    static let keepaliveIntervalNs: UInt64 = 5_000_000_000
    static let maxUnansweredNops: Int32 = 3
    static let logoutWaitNs: UInt64 = 2_000_000_000

    init(location: IscsiLocation, executor: QueueExecutor, log: @escaping @Sendable (String) -> Void) throws {
        guard let context = iscsi_create_context(location.effectiveInitiatorName) else {
            throw IscsiError("cannot create an iSCSI context for initiator \(location.effectiveInitiatorName)")
        }
        self.context = context
        self.location = location
        self.executor = executor
        self.log = log
        iscsi_set_session_type(context, ISCSI_SESSION_NORMAL)
        iscsi_set_targetname(context, location.target)
        iscsi_set_header_digest(context, Self.digest(location.headerDigest))
        if let user = location.user { iscsi_set_initiator_username_pwd(context, user, location.password ?? "") }
        if location.timeoutSeconds > 0 { iscsi_set_timeout(context, Int32(location.timeoutSeconds)) }
    }

    deinit {
        precondition(phase == .closed || phase == .idle, "an iSCSI session was dropped while open")
        if phase == .idle { iscsi_destroy_context(context) }
    }

    var description: String { "\(location.target) LUN \(location.lun) at \(location.portal)" }

    @inline(__always) private func assertOwned() {
        assert(QueueExecutor.current === executor, "iSCSI session \(description) used off its queue executor")
    }

    // MARK: Login

    /// Logs in on first use; returns nil once the session is ready, else why it cannot be.
    nonisolated(nonsending) func ready() async -> String? {
        assertOwned()
        while true {
            switch phase {
            case .ready: return nil
            case .failed(let reason): return reason
            case .closing, .closed: return "the session to \(description) is closed"
            case .connecting:
                await withUnsafeContinuation { loginWaiters.append($0) }
            case .idle:
                phase = .connecting
                let started = iscsi_full_connect_async(context, location.portal, location.lun, { _, status, _, argument in
                    Unmanaged<IscsiSession>.fromOpaque(argument!).takeUnretainedValue().loginFinished(status: status)
                }, Unmanaged.passUnretained(self).toOpaque())
                guard started == 0 else {
                    phase = .failed("cannot connect to \(location.portal): \(lastError)")
                    continue
                }
                startLoops()
                await withUnsafeContinuation { loginWaiters.append($0) }
            }
        }
    }

    private func loginFinished(status: Int32) {
        assertOwned()
        // Reconnects log in again through libiscsi's own callback, not this one.
        guard phase == .connecting else { return }
        phase = status == Int32(SCSI_STATUS_GOOD.rawValue)
            ? .ready
            : .failed("iSCSI login to \(description) failed: \(lastError)")
        lastKeepaliveNs = MonotonicClock.now()
        let waiters = loginWaiters
        loginWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    private var lastError: String {
        guard let message = iscsi_get_error(context) else { return "unknown error" }
        let text = String(cString: message)
        return text.isEmpty ? "unknown error" : text
    }

    // MARK: Commands

    /// Queues one SCSI command that `start` builds on the context (handing libiscsi the callback
    /// and its argument), lets `prepare` attach buffers to the task, and waits for the target's
    /// answer. The caller releases the completion.
    nonisolated(nonsending) func execute(
        _ start: (OpaquePointer, iscsi_command_cb, UnsafeMutableRawPointer) -> UnsafeMutablePointer<scsi_task>?,
        prepare: (UnsafeMutablePointer<scsi_task>) -> Void = { _ in }
    ) async -> IscsiCompletion {
        assertOwned()
        if phase != .ready, let reason = await ready() {
            reportOnce(reason)
            return IscsiCompletion(status: SCSI_STATUS_ERROR, task: nil)
        }
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<IscsiCompletion, Never>) in
            // The continuation is one pointer: it rides in libiscsi's private-data argument.
            let argument = unsafeBitCast(continuation, to: UnsafeMutableRawPointer.self)
            guard let task = start(context, iscsiCommandFinished, argument) else {
                reportOnce("cannot queue a SCSI command to \(description): \(lastError)")
                continuation.resume(returning: IscsiCompletion(status: SCSI_STATUS_ERROR, task: nil))
                return
            }
            prepare(task)
            wakeWriter()
        }
    }

    private func reportOnce(_ text: String) {
        guard !reportedFailure else { return }
        reportedFailure = true
        log(text)
    }

    // MARK: Event loops

    private func startLoops() {
        runningLoops = 2
        ThreadAffineExecutors.startTask(serving: executor) { [self] in await serviceLoop() }
        ThreadAffineExecutors.startTask(serving: executor) { [self] in await writerLoop() }
    }

    private var loopsShouldRun: Bool {
        switch phase {
        case .connecting, .ready, .closing: return true
        case .idle, .failed, .closed: return false
        }
    }

    private nonisolated(nonsending) func serviceLoop() async {
        assertOwned()
        while loopsShouldRun {
            let fd = iscsi_get_fd(context)
            let events = iscsi_which_events(context)
            var fired: Int32 = 0
            if fd >= 0 && events != 0 {
                // A negative result (the socket was swapped during a reconnect) counts as no event.
                fired = max(0, await RingPoll.wait(fd: fd, events: Int16(truncatingIfNeeded: events), timeout: tick))
            } else {
                // libiscsi waits out a reconnect back-off: its header asks for 100 ms or more.
                await executor.sleep(untilNs: MonotonicClock.now() + 100_000_000)
            }
            guard loopsShouldRun else { break }
            // With no events this runs libiscsi's timeout scan and any pending reconnect.
            _ = iscsi_service(context, fired)
            keepalive()
            if phase == .closing && MonotonicClock.now() >= logoutDeadlineNs { finishLogout() }
        }
        loopStopped()
    }

    private nonisolated(nonsending) func writerLoop() async {
        assertOwned()
        while loopsShouldRun {
            let fd = iscsi_get_fd(context)
            // Nothing to send, or a reconnect under way: the service loop polls for what libiscsi needs.
            if fd < 0 || iscsi_out_queue_length(context) == 0 {
                await withUnsafeContinuation { parkedWriter = $0 }
                continue
            }
            // A logged-in session's socket is connected: try the (non-blocking) send first, and
            // poll only when the socket is full.
            if iscsi_is_logged_in(context) != 0 {
                _ = iscsi_service(context, Int32(POLLOUT))
                if iscsi_out_queue_length(context) == 0 { continue }
            }
            let fired = await RingPoll.wait(fd: fd, events: Int16(POLLOUT), timeout: tick)
            guard loopsShouldRun else { break }
            // Only after the ring saw the socket writable: libiscsi takes POLLOUT on a connecting
            // socket as the connect's completion.
            if fired > 0 && fired & Int32(POLLOUT) != 0 && iscsi_get_fd(context) == fd { _ = iscsi_service(context, Int32(POLLOUT)) }
        }
        loopStopped()
    }

    private func wakeWriter() {
        guard let writer = parkedWriter else { return }
        parkedWriter = nil
        writer.resume()
    }

    /// QEMU's NOP-Out keepalive: a target that stops answering is reconnected to.
    private func keepalive() {
        guard phase == .ready else { return }
        let now = MonotonicClock.now()
        guard now &- lastKeepaliveNs >= Self.keepaliveIntervalNs else { return }
        lastKeepaliveNs = now
        if iscsi_get_nops_in_flight(context) > Self.maxUnansweredNops {
            log("\(description) stopped answering NOP-Outs: reconnecting")
            _ = iscsi_reconnect(context)
        } else {
            _ = iscsi_nop_out_async(context, nil, nil, 0, nil)
            wakeWriter()
        }
    }

    private func loopStopped() {
        runningLoops -= 1
        if runningLoops == 0, let waiter = loopsStopped {
            loopsStopped = nil
            waiter.resume()
        }
    }

    // MARK: Close

    /// Logs out (waiting at most 2 s for the target), stops both loops and frees the context.
    nonisolated(nonsending) func close() async {
        assertOwned()
        switch phase {
        case .idle:
            return
        case .closing, .closed:
            return
        case .connecting:
            // Nobody waits for a login while the node closes: the graph closes idle nodes.
            break
        case .ready:
            phase = .closing
            logoutDeadlineNs = MonotonicClock.now() + Self.logoutWaitNs
            let started = iscsi_logout_async(context, { _, _, _, argument in
                Unmanaged<IscsiSession>.fromOpaque(argument!).takeUnretainedValue().finishLogout()
            }, Unmanaged.passUnretained(self).toOpaque())
            if started == 0 {
                wakeWriter()
                await withUnsafeContinuation { logoutDone = $0 }
            }
        case .failed:
            break
        }
        phase = .closed
        if runningLoops > 0 {
            wakeWriter()
            // Wakes a poll on the socket at once instead of at the next tick.
            let fd = iscsi_get_fd(context)
            if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
            await withUnsafeContinuation { loopsStopped = $0 }
        }
        iscsi_destroy_context(context)
    }

    private func finishLogout() {
        guard let waiter = logoutDone else { return }
        logoutDone = nil
        waiter.resume()
    }

    private static func digest(_ digest: IscsiLocation.HeaderDigest) -> iscsi_header_digest {
        switch digest {
        case .none: ISCSI_HEADER_DIGEST_NONE
        case .crc32c: ISCSI_HEADER_DIGEST_CRC32C
        case .crc32cNone: ISCSI_HEADER_DIGEST_CRC32C_NONE
        case .noneCrc32c: ISCSI_HEADER_DIGEST_NONE_CRC32C
        }
    }
}

/// libiscsi's completion callback for SCSI commands, inside `iscsi_service` on the session's executor.
private func iscsiCommandFinished(_ context: OpaquePointer?, _ status: Int32, _ data: UnsafeMutableRawPointer?,
                                  _ argument: UnsafeMutableRawPointer?) {
    guard let argument else { preconditionFailure("libiscsi called back without the command's continuation") }
    let continuation = unsafeBitCast(argument, to: UnsafeContinuation<IscsiCompletion, Never>.self)
    continuation.resume(returning: IscsiCompletion(callbackStatus: status, task: data?.assumingMemoryBound(to: scsi_task.self)))
}

/// Runs a session's control-path calls (probing at open, block status, close) on its executor from
/// any thread: an actor bound to that executor.
actor IscsiSessionHost {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let session: IscsiSession

    init(_ session: IscsiSession) {
        self.session = session
        self.unownedExecutor = session.executor.asUnownedSerialExecutor()
    }

    func ready() async -> String? { await session.ready() }
    func geometry() async throws -> IscsiLunGeometry { try await IscsiLunGeometry.probe(session) }
    func lbaStatus(fromLBA lba: UInt64) async throws -> IscsiLbaStatus { try await IscsiLbaStatus.query(session, fromLBA: lba) }
    func close() async { await session.close() }
}
