import DequeModule
import Glibc
import StrataFormatting
import StrataGraph
import StrataRuntime

/// One QMP client connection, served on the control executor: the greeting, capabilities
/// negotiation, then one command at a time in the order they arrive; replies and events leave
/// through one outbox, so they never interleave inside a message. A client that stops reading
/// cannot hold anything up: its outbox is bounded, and past the bound the connection is closed
/// (as QEMU drops a monitor whose output buffer overflows). Commands run as ordinary async code:
/// while one waits (a graph transaction switching queues), other sessions and every queue go on.
actor QMPSession {
    /// Messages waiting to be sent before the client is considered gone.
    static let outboxLimit = 4096
    static let receiveBytes = 64 << 10
    static let sendBytes = 64 << 10

    nonisolated let unownedExecutor: UnownedSerialExecutor
    let number: Int
    private let socket: RingSocket
    nonisolated var socketFD: Int32 { socket.fd }
    private let monitor: QMPMonitor
    private let pretty: Bool
    private var negotiated = false
    private var outbox: Deque<String> = []
    private var sending = false
    private var closed = false

    init(number: Int, socket: RingSocket, monitor: QMPMonitor, control: QueueExecutor, pretty: Bool) {
        precondition(number >= 0, "session numbers count up from 0")
        unownedExecutor = control.asUnownedSerialExecutor()
        self.number = number
        self.socket = socket
        self.monitor = monitor
        self.pretty = pretty
    }

    /// Whether events go to this client: only after negotiation, as in QEMU.
    var receivesEvents: Bool { negotiated && !closed }

    func run() async {
        post(Self.greeting)
        var framer = QMPFramer()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.receiveBytes, alignment: 16)
        defer { buffer.deallocate() }
        receiving: while !closed {
            let count: Int
            do { count = try await socket.receive(into: buffer, count: Self.receiveBytes) } catch { break }
            if count == 0 { break }
            for piece in framer.feed(UnsafeRawBufferPointer(start: buffer, count: count)) {
                switch piece {
                case .message(let text):
                    await handle(text)
                case .stray(let byte):
                    post(Self.errorReply(.parse("expecting value near '\(Character(UnicodeScalar(byte)))'"), id: nil))
                case .tooLong:
                    post(Self.errorReply(.parse("message exceeds \(QMPFramer.maxMessageBytes) bytes"), id: nil))
                    await flushOutbox()
                    break receiving
                case .tooDeep:
                    post(Self.errorReply(.parse("nesting too deep"), id: nil))
                }
                if closed { break receiving }
            }
        }
        await close()
    }

    /// Queues an event for this client.
    func deliver(_ event: QMPEvent) {
        guard receivesEvents else { return }
        post(event.message)
    }

    // MARK: Commands

    private func handle(_ text: String) async {
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(text) } catch {
            post(Self.errorReply(.parse("invalid JSON: \(text.prefix(80))"), id: nil))
            return
        }
        guard case .object(var message) = parsed else {
            post(Self.errorReply(.notAnObject, id: nil))
            return
        }
        let id = message.removeValue(forKey: "id")
        guard case .string(let command)? = message.removeValue(forKey: "execute") else {
            let detail = message["execute"] == nil ? "QMP input lacks member 'execute'" : "QMP input member 'execute' must be a string"
            post(Self.errorReply(QMPError(detail), id: id))
            return
        }
        var arguments: [String: JSONValue] = [:]
        if let given = message.removeValue(forKey: "arguments") {
            guard case .object(let fields) = given else {
                post(Self.errorReply(QMPError("QMP input member 'arguments' must be an object"), id: id))
                return
            }
            arguments = fields
        }
        if let extra = message.keys.sorted().first {
            post(Self.errorReply(QMPError("QMP input member '\(extra)' is unexpected"), id: id))
            return
        }
        if command == "qmp_capabilities" {
            if negotiated {
                post(Self.errorReply(.negotiationDone, id: id))
            } else {
                negotiated = true
                post(Self.returnReply(.emptyObject, id: id))
            }
            return
        }
        guard negotiated else {
            post(Self.errorReply(.negotiationFirst, id: id))
            return
        }
        do {
            let result = try await monitor.execute(command, arguments: arguments)
            post(Self.returnReply(result, id: id))
        } catch let error as QMPError {
            post(Self.errorReply(error, id: id))
        } catch {
            post(Self.errorReply(QMPError("\(error)"), id: id))
        }
        if command == "quit" {
            // As QEMU: the reply goes out, then the daemon stops; its shutdown closes every session.
            await flushOutbox()
            await monitor.quit()
        }
    }

    // MARK: Output

    private func post(_ message: OrderedJSON) {
        guard !closed else { return }
        guard outbox.count < Self.outboxLimit else {
            // The client has not read thousands of messages: it is gone or hostile.
            _ = Glibc.shutdown(socket.fd, Int32(SHUT_RDWR))
            return
        }
        outbox.append((pretty ? message.text() : message.compactText()) + (pretty ? "\n" : "\r\n"))
        if !sending { Task { await self.flushOutbox() } }
    }

    /// Sends the outbox; one sender at a time, so messages go out whole and in order.
    private func flushOutbox() async {
        guard !sending else { return }
        sending = true
        defer { sending = false }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.sendBytes, alignment: 16)
        defer { buffer.deallocate() }
        while let text = outbox.popFirst(), !closed {
            var sent = true
            var bytes = text.utf8[...]
            while sent, !bytes.isEmpty {
                // The buffer is owned by this flush while the send is in flight.
                let chunk = bytes.prefix(Self.sendBytes)
                let count = chunk.count
                UnsafeMutableRawBufferPointer(start: buffer, count: count).copyBytes(from: chunk)
                bytes = bytes.dropFirst(count)
                do { try await socket.sendAll(from: buffer, count: count) } catch { sent = false }
            }
            if !sent {
                // Only while the session still owns the descriptor: once `close` ran, its number
                // may already belong to another client's connection.
                if !closed { _ = Glibc.shutdown(socket.fd, Int32(SHUT_RDWR)) }
                outbox.removeAll()
                return
            }
        }
    }

    private func close() async {
        guard !closed else { return }
        closed = true
        outbox.removeAll()
        try? await socket.close()
        await monitor.sessionEnded(number)
    }

    // MARK: Messages

    static let greeting = OrderedJSON.object([
        ("QMP", .object([
            ("version", .object([
                ("qemu", .object([("micro", .int(QMPMonitor.qemuVersion.micro)), ("minor", .int(QMPMonitor.qemuVersion.minor)),
                                  ("major", .int(QMPMonitor.qemuVersion.major))])),
                ("package", .string(QMPMonitor.package)),
            ])),
            ("capabilities", .array([])),
        ])),
    ])

    static func returnReply(_ result: OrderedJSON, id: JSONValue?) -> OrderedJSON {
        var fields: [(String, OrderedJSON)] = [("return", result)]
        if let id { fields.append(("id", id.ordered)) }
        return .object(fields)
    }

    static func errorReply(_ error: QMPError, id: JSONValue?) -> OrderedJSON {
        var fields: [(String, OrderedJSON)] = [("error", .object([("class", .string(error.errorClass.rawValue)), ("desc", .string(error.desc))]))]
        if let id { fields.append(("id", id.ordered)) }
        return .object(fields)
    }
}
