import DequeModule
import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

/// One NBD connection, owned by a queue executor: an actor bound to it, so every socket operation
/// goes through that executor's ring and every request from another queue hops here.
///
/// Many requests are in flight at once. A request takes an entry of a fixed slot table (its index
/// is the cookie), writes its header and payload while holding the send turn (so two requests'
/// bytes never interleave), and waits; one receive loop per connection parses the reply stream
/// and settles the slots. No task and no allocation per request beyond the parser's events.
///
/// When the connection drops (EOF, a socket error, a reply the parser refuses), the requests on
/// the wire are resent after a reconnect when `reconnect-delay` is set, as QEMU does; requests
/// wait for the reconnect until the delay runs out, and fail with EIO after it. With delay 0 the
/// connection is dead and every request fails with EIO.
actor NBDClientConnection {
    /// Requests in flight per connection; more wait for a free slot.
    static let slotCount = 64
    private static let receiveBytes = 256 << 10
    private static let firstBackoffNs: UInt64 = 10_000_000
    /// Reconnect attempts back off to this; it also bounds how long a closing node waits for a sleep.
    private static let maxBackoffNs: UInt64 = 500_000_000
    private static let deadlinePollNs: UInt64 = 100_000_000

    private enum Link {
        /// Not connected yet; `adopt` is the socket the node opened with, if this connection takes it.
        case idle(adopt: RingSocket?)
        case connecting
        case connected(RingSocket)
        /// Lost and reconnecting; requests wait until the deadline, then fail at once until it is back.
        case reconnecting(deadlineNs: UInt64)
        /// Lost with reconnect-delay 0, or closed.
        case dead
    }

    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let executor: QueueExecutor
    private let endpoint: NBDEndpoint
    /// What the node opened with; later connections must negotiate the same.
    private let expected: NBDClientNegotiation
    private let clock: any IOClock
    private var link: Link
    /// Changes at every connect and drop: a receive loop or a sender from an older one stops.
    private var generation: UInt64 = 0
    private var parser: NBDReplyParser
    private var slots: [NBDRequestSlot]
    private var freeSlots: [Int]
    private var slotWaiters = Deque<ParkedContinuation<Void>>()
    private var linkWaiters = Deque<ParkedContinuation<Void>>()
    /// Counts wakes of `linkWaiters`: a waiter parks only if none happened since it looked.
    private var linkChanges: UInt64 = 0
    /// Counts failed first connects (delay 0): requests waiting for that attempt give up.
    private var failedConnects = 0
    private var sending = false
    private var sendWaiters = Deque<ParkedContinuation<Void>>()
    /// The request header being sent; one sender at a time uses it. An IOBuffer (a Sendable
    /// view) so the nonisolated deinit may free it.
    private let headerMemory: IOBuffer
    private var header: UnsafeMutableRawPointer { headerMemory.base! }
    private var dialingFD: Int32?
    private var closing = false

    init(endpoint: NBDEndpoint, expected: NBDClientNegotiation, executor: QueueExecutor, clock: any IOClock, adopting socket: RingSocket?) {
        self.unownedExecutor = executor.asUnownedSerialExecutor()
        self.executor = executor
        self.endpoint = endpoint
        self.expected = expected
        self.clock = clock
        self.link = .idle(adopt: socket)
        self.parser = NBDReplyParser(structuredReplies: expected.structuredReplies)
        self.slots = Array(repeating: NBDRequestSlot(), count: Self.slotCount)
        self.freeSlots = Array((0..<Self.slotCount).reversed())
        self.headerMemory = IOBuffer(base: .allocate(byteCount: NBDRequest.headerBytes, alignment: 16), count: NBDRequest.headerBytes)
    }

    deinit {
        headerMemory.base?.deallocate()
    }

    // MARK: Requests

    /// Sends one request and waits for its reply; `buffer` receives read data or holds write data
    /// and must stay valid until this returns. Returns the status and, for BLOCK_STATUS, the
    /// first extent.
    func execute(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt32,
                 buffer: IOBuffer = .empty) async -> (IOStatus, NBDBlockDescriptor?) {
        let index = await takeSlot()
        defer { releaseSlot(index) }
        slots[index].inUse = true
        slots[index].request = NBDRequest(command: command, flags: flags, cookie: UInt64(index), offset: offset, length: length)
        slots[index].buffer = buffer.base
        while true {
            guard await waitForLink() else { return (.ioError, nil) }
            await lockSending()
            guard case .connected(let socket) = link else {
                unlockSending()
                continue
            }
            let current = generation
            do {
                try parser.expect(slots[index].request)
            } catch {
                // Cookies are slot indices, unique in flight: this cannot happen.
                unlockSending()
                return (.ioError, nil)
            }
            slots[index].sentOn = current
            slots[index].outcome = nil
            slots[index].extent = nil
            slots[index].request.encode(into: UnsafeMutableRawBufferPointer(start: header, count: NBDRequest.headerBytes))
            var failure: SystemError?
            do {
                try await socket.sendAll(from: header, count: NBDRequest.headerBytes)
                if command == .write, let data = buffer.base { try await socket.sendAll(from: data, count: Int(length)) }
            } catch {
                failure = error
            }
            unlockSending()
            if let failure { drop("server \(endpoint.server): send failed: \(failure)", generation: current) }
            await park { waiter in
                if slots[index].outcome == nil { slots[index].waiter = waiter } else { waiter.resume() }
            }
            switch slots[index].outcome {
            case .completed(let status)?: return (status, slots[index].extent)
            case .resend?: continue
            case .failed?, nil: return (.ioError, nil)
            }
        }
    }

    private func takeSlot() async -> Int {
        while freeSlots.isEmpty {
            await park { waiter in
                if freeSlots.isEmpty { slotWaiters.append(waiter) } else { waiter.resume() }
            }
        }
        return freeSlots.removeLast()
    }

    private func releaseSlot(_ index: Int) {
        slots[index].reset()
        freeSlots.append(index)
        slotWaiters.popFirst()?.resume()
    }

    private func lockSending() async {
        while sending {
            await park { waiter in
                if sending { sendWaiters.append(waiter) } else { waiter.resume() }
            }
        }
        sending = true
    }

    private func unlockSending() {
        sending = false
        sendWaiters.popFirst()?.resume()
    }

    // MARK: Link

    /// Waits until the connection is up; false when the request must fail with EIO instead.
    private func waitForLink() async -> Bool {
        let failuresBefore = failedConnects
        while true {
            if failedConnects != failuresBefore { return false }
            switch link {
            case .connected:
                return true
            case .dead:
                return false
            case .idle(let adopted?):
                attach(adopted)
                continue
            case .idle(nil):
                link = .connecting
                spawn { await self.connectLoop() }
            case .connecting:
                break
            case .reconnecting(let deadlineNs):
                if clock.nowNs >= deadlineNs { return false }
            }
            let seen = linkChanges
            await park { waiter in
                if linkChanges == seen { linkWaiters.append(waiter) } else { waiter.resume() }
            }
        }
    }

    private func wakeLinkWaiters() {
        linkChanges &+= 1
        while let waiter = linkWaiters.popFirst() { waiter.resume() }
    }

    private func attach(_ socket: RingSocket) {
        generation &+= 1
        parser = NBDReplyParser(structuredReplies: expected.structuredReplies, contextIDs: Set(expected.metaContexts.map(\.id)))
        link = .connected(socket)
        let current = generation
        spawn { await self.receive(on: socket, generation: current) }
        wakeLinkWaiters()
    }

    /// Takes the connection down after a fault on generation `dropped`: requests on the wire are
    /// resent after a reconnect (reconnect-delay > 0) or fail.
    private func drop(_ fault: String, generation dropped: UInt64) {
        guard dropped == generation, case .connected(let socket) = link else { return }
        generation &+= 1
        // Wakes the receive loop and fails sends in progress; the loop closes the descriptor.
        _ = Glibc.shutdown(socket.fd, Int32(SHUT_RDWR))
        let retry = endpoint.reconnectDelayNs > 0 && !closing
        if !closing {
            let seconds = endpoint.reconnectDelayNs / 1_000_000_000
            log("\(fault); \(retry ? "reconnecting, requests wait up to \(seconds) s" : "failing its requests (reconnect-delay is 0)")")
        }
        for index in slots.indices where slots[index].sentOn == dropped {
            slots[index].settle(retry ? .resend : .failed)
        }
        if retry {
            let deadline = clock.nowNs &+ endpoint.reconnectDelayNs
            link = .reconnecting(deadlineNs: deadline)
            spawn { await self.connectLoop() }
            spawn { await self.watchDeadline(deadline) }
        } else {
            link = .dead
        }
        wakeLinkWaiters()
    }

    /// Dials until connected, backing off between attempts; a first connect with delay 0 tries once.
    private func connectLoop() async {
        var backoff = Self.firstBackoffNs
        while !closing {
            do {
                let (socket, negotiation) = try await NBDDialer.dial(endpoint) { self.dialingFD = $0 }
                if closing {
                    Glibc.close(socket.fd)
                    return
                }
                if let problem = endpoint.mismatch(negotiation, expected: expected) {
                    Glibc.close(socket.fd)
                    throw NBDDialError(message: "NBD server \(endpoint.server): \(problem)")
                }
                if case .reconnecting = link { log("reconnected to \(endpoint.server)") }
                attach(socket)
                return
            } catch {
                switch link {
                case .connecting where endpoint.reconnectDelayNs == 0:
                    log("\(error)")
                    link = .idle(adopt: nil)
                    failedConnects += 1
                    wakeLinkWaiters()
                    return
                case .connecting:
                    log("\(error); retrying for \(endpoint.reconnectDelayNs / 1_000_000_000) s")
                    let deadline = clock.nowNs &+ endpoint.reconnectDelayNs
                    link = .reconnecting(deadlineNs: deadline)
                    spawn { await self.watchDeadline(deadline) }
                case .reconnecting:
                    break
                default:
                    return
                }
            }
            await clock.sleep(untilNs: clock.nowNs &+ backoff)
            backoff = min(backoff * 2, Self.maxBackoffNs)
        }
    }

    /// Wakes the requests waiting for a reconnect when the delay runs out, so they fail with EIO.
    /// Sleeps in short steps so a closing node is not held up by a long delay.
    private func watchDeadline(_ deadline: UInt64) async {
        while !closing, case .reconnecting(let current) = link, current == deadline {
            let now = clock.nowNs
            if now >= deadline {
                log("no reconnect within \(endpoint.reconnectDelayNs / 1_000_000_000) s: requests fail until the server is back")
                wakeLinkWaiters()
                return
            }
            await clock.sleep(untilNs: min(deadline, now + Self.deadlinePollNs))
        }
    }

    // MARK: Replies

    private func receive(on socket: RingSocket, generation current: UInt64) async {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.receiveBytes, alignment: 64)
        var fault: String?
        while fault == nil {
            let count: Int
            do {
                count = try await socket.receive(into: buffer, count: Self.receiveBytes)
            } catch {
                fault = "\(error)"
                break
            }
            guard current == generation else { break }
            if count == 0 {
                fault = "server closed the connection"
                break
            }
            do {
                let events = try parser.feed(UnsafeRawBufferPointer(start: buffer, count: count))
                for event in events { deliver(event) }
            } catch {
                fault = error.message
            }
        }
        buffer.deallocate()
        if let fault { drop("server \(endpoint.server): \(fault)", generation: current) }
        // Closed only once no sender can still be writing to it.
        await lockSending()
        Glibc.close(socket.fd)
        unlockSending()
    }

    private func deliver(_ event: NBDReplyEvent) {
        switch event {
        case .data(let cookie, let offset, let bytes):
            // The parser checked the range against the request.
            guard let base = slots[Int(cookie)].buffer else { return }
            let at = Int(offset - slots[Int(cookie)].request.offset)
            bytes.withUnsafeBytes { (base + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        case .hole(let cookie, let offset, let length):
            guard let base = slots[Int(cookie)].buffer else { return }
            let at = Int(offset - slots[Int(cookie)].request.offset)
            (base + at).initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
        case .blockStatus(let cookie, _, let descriptors):
            if slots[Int(cookie)].extent == nil { slots[Int(cookie)].extent = descriptors.first }
        case .error:
            break  // the reply's first error arrives again with `.completed`
        case .completed(let cookie, let error):
            slots[Int(cookie)].settle(.completed(error.map { IOStatus(errno: $0.linuxErrno) } ?? .ok))
        }
    }

    // MARK: Lifecycle

    /// Sends NBD_CMD_DISC, hangs up and fails whatever still waits. Later requests fail with EIO.
    func close() async {
        guard !closing else { return }
        closing = true
        if let dialingFD { _ = Glibc.shutdown(dialingFD, Int32(SHUT_RDWR)) }
        switch link {
        case .connected(let socket):
            await lockSending()
            if case .connected = link {
                NBDRequest(command: .disconnect, cookie: 0, offset: 0, length: 0)
                    .encode(into: UnsafeMutableRawBufferPointer(start: header, count: NBDRequest.headerBytes))
                try? await socket.sendAll(from: header, count: NBDRequest.headerBytes)
            }
            unlockSending()
            // The receive loop sees the end of the stream and closes the descriptor. Only while
            // the link still holds it: if the loop closed it meanwhile, the number may be reused.
            if case .connected(let current) = link, current == socket { _ = Glibc.shutdown(socket.fd, Int32(SHUT_RDWR)) }
        case .idle(let adopted?):
            Glibc.close(adopted.fd)
        default:
            break
        }
        generation &+= 1
        link = .dead
        for index in slots.indices where slots[index].sentOn != nil { slots[index].settle(.failed) }
        wakeLinkWaiters()
    }

    // MARK: Helpers

    /// Starts a long-lived task on this connection's executor (receive loop, reconnects).
    private nonisolated func spawn(_ body: @escaping @Sendable () async -> Void) {
        Task(executorPreference: ThreadAffineExecutors.preference(for: executor)) { await body() }
    }

    private func log(_ text: String) {
        let line = "strata: nbd node '\(endpoint.nodeName)': \(text)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
