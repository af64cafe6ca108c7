import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

/// The NBD export server (qemu-storage-daemon's nbd-server plus its nbd exports): listeners
/// accept on the control executor's ring; each connection is handed to the next queue executor in
/// turn and served there entirely (`NBDConnection`).
public final class NBDServer: Sendable {
    public struct Settings: Sendable {
        /// A client that has not finished the handshake this long after connecting is dropped
        /// (qemu-nbd's --handshake-limit, 10 s by default); 0 waits forever.
        public var handshakeLimitSeconds: Double = 10
        /// Connections beyond this many are closed at once (0: no limit, as qemu-storage-daemon).
        public var maxConnections: Int = 0
        /// How long shutdown waits for clients to take their last replies before cutting them off.
        public var shutdownGraceSeconds: Double = 10

        public init() {}
    }

    private struct ConnectionEntry {
        var connection: NBDConnection
        var fd: Int32
        var handshakeDeadlineNs: UInt64?
        /// The export the client chose, once the handshake is done.
        var exportID: String?
    }

    /// How `removeExport` treats clients still on the export (QEMU's BlockExportRemoveMode).
    public enum RemoveMode: String, Sendable {
        /// Wait for them to disconnect.
        case safe
        /// Disconnect them.
        case hard
    }

    private struct State {
        var listeners: [RingListener] = []
        var acceptLoops: [Task<Void, Never>] = []
        var connections: [Int: ConnectionEntry] = [:]
        var nextConnection = 0
        var shuttingDown = false
        var sweeper: Task<Void, Never>?
    }

    let controller: GraphController
    let exports = NBDExportRegistry()
    private let settings: Settings
    private let logger: @Sendable (String) -> Void
    private let state = Locked(State())

    public init(controller: GraphController, settings: Settings = Settings(), log: @escaping @Sendable (String) -> Void) {
        self.controller = controller
        self.settings = settings
        self.logger = log
    }

    func log(_ message: String) { logger(message) }

    var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }

    /// Connections open now (handshaking or transmitting).
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    // MARK: Exports

    /// Serves `options.nodeName` as a backend named after the export's ID, with a port on every queue.
    public func addExport(_ options: NBDExportOptions) async throws {
        guard !isShuttingDown else { throw NBDServerError.shuttingDown }
        if exports.all.contains(where: { $0.options.id == options.id || $0.options.name == options.name }) {
            throw NBDServerError.duplicateExport("an export with id '\(options.id)' or name '\(options.name)' exists already")
        }
        // Exports share the node with everyone (qemu-storage-daemon's exports take what they need
        // and share all): several exports, or an export and a job, may use one node.
        try await controller.apply(json: .object(["type": "backend-add", "data": .object([
            "id": .string(options.id), "node-name": .string(options.nodeName),
            "writable": .bool(options.writable), "share-rw": .bool(true),
        ])]))
        var ports: [BackendPort] = []
        do {
            for queue in controller.queues {
                let port = BackendPort(backendName: options.id, queue: queue)
                try await controller.attach(port)
                ports.append(port)
            }
            let node = try await controller.state(of: options.nodeName)
            let bitmaps = try await exportedBitmaps(options)
            try exports.add(NBDServerExport(options: options, state: node, ports: ports, bitmaps: bitmaps))
            for bitmap in bitmaps { await controller.addUser(of: bitmap) }
        } catch {
            for port in ports { await controller.detach(port) }
            _ = try? await controller.apply(json: .object(["type": "backend-del", "data": .object(["id": .string(options.id)])]))
            throw error
        }
    }

    /// The bitmaps an export offers, found on its node or down its chain of file and filtered
    /// children, as QEMU looks for them.
    private func exportedBitmaps(_ options: NBDExportOptions) async throws -> [DirtyBitmap] {
        let model = await controller.model
        var found: [DirtyBitmap] = []
        for name in options.bitmaps {
            var node: String? = options.nodeName
            var bitmap: DirtyBitmap?
            while let current = node, bitmap == nil {
                bitmap = await controller.dirtyBitmap(node: current, name: name)
                node = model.nodes[current]?.children.first { $0.role == .file || $0.role == .filtered }?.nodeName
            }
            guard let bitmap else { throw NBDServerError.badBitmap("Bitmap '\(name)' is not found") }
            if let refusal = bitmap.refusal() { throw NBDServerError.badBitmap(refusal) }
            // A read-only export is a point-in-time view: a bitmap that still records would
            // change under the client (QEMU's check).
            if !options.writable && bitmap.isRecording {
                throw NBDServerError.badBitmap("Enabled bitmap '\(name)' incompatible with readonly export")
            }
            found.append(bitmap)
        }
        return found
    }

    // MARK: Listening

    /// Starts listening on `address`; returns the address really bound (port 0 resolved).
    @discardableResult
    public func listen(on address: NBDServerAddress) throws -> NBDServerAddress {
        guard !isShuttingDown else { throw NBDServerError.shuttingDown }
        let listener: RingListener
        let bound: NBDServerAddress
        switch address {
        case .inet(let host, let port):
            listener = try RingListener.tcp(host: host, port: port)
            bound = .inet(host: host, port: listener.port ?? port)
        case .unix(let path):
            listener = try RingListener.unix(path: path)
            bound = address
        }
        let control = controller.control
        let loop = Task(executorPreference: control) { await self.acceptLoop(listener) }
        state.withLock { state in
            state.listeners.append(listener)
            state.acceptLoops.append(loop)
            if state.sweeper == nil && settings.handshakeLimitSeconds > 0 {
                state.sweeper = Task(executorPreference: control) { await self.sweepHandshakes() }
            }
        }
        return bound
    }

    private func acceptLoop(_ listener: RingListener) async {
        let queues = controller.queues
        while !isShuttingDown {
            let socket: RingSocket
            do {
                socket = try await listener.accept()
            } catch {
                // Shut down, or stopped by stopListening (which forgets the listener first).
                if isShuttingDown || !state.withLock({ $0.listeners.contains { $0 === listener } }) { return }
                if error.errno == EMFILE || error.errno == ENFILE || error.errno == ENOBUFS || error.errno == ENOMEM {
                    // Out of descriptors or memory: wait for connections to end instead of spinning.
                    log("NBD server: accept: \(error); retrying in 100 ms")
                    await controller.control.sleep(untilNs: MonotonicClock.now() + 100_000_000)
                    continue
                }
                log("NBD server: accept on \(listener.unixPath ?? String(listener.port ?? 0)) failed: \(error)")
                return
            }
            if listener.port != nil {
                // Replies are often small (a write's 16 bytes): Nagle would hold them for the
                // client's delayed ACK.
                var one: Int32 = 1
                _ = setsockopt(socket.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            let admitted: (Int, QueueContext)? = state.withLock { state in
                if state.shuttingDown { return nil }
                if settings.maxConnections > 0 && state.connections.count >= settings.maxConnections { return nil }
                let number = state.nextConnection
                state.nextConnection += 1
                return (number, queues[number % queues.count])
            }
            guard let (number, queue) = admitted else {
                try? await socket.close()
                continue
            }
            let connection = NBDConnection(socket: socket, number: number, queue: queue, server: self)
            let deadline = settings.handshakeLimitSeconds > 0
                ? MonotonicClock.now() + UInt64(settings.handshakeLimitSeconds * 1e9) : nil
            state.withLock { $0.connections[number] = ConnectionEntry(connection: connection, fd: socket.fd, handshakeDeadlineNs: deadline) }
            ThreadAffineExecutors.startTask(serving: queue.executor) { await connection.run() }
        }
    }

    /// Once a second, cuts off clients still handshaking past the limit. The shutdown happens
    /// under the lock, before the connection can unregister and close its descriptor.
    private func sweepHandshakes() async {
        while !isShuttingDown {
            await controller.control.sleep(untilNs: MonotonicClock.now() + 1_000_000_000)
            let now = MonotonicClock.now()
            state.withLock { state in
                for (number, entry) in state.connections {
                    guard let deadline = entry.handshakeDeadlineNs, now >= deadline else { continue }
                    _ = Glibc.shutdown(entry.fd, Int32(SHUT_RDWR))
                    state.connections[number]?.handshakeDeadlineNs = nil
                }
            }
        }
    }

    func handshakeFinished(_ number: Int, exportID: String) {
        state.withLock { state in
            state.connections[number]?.handshakeDeadlineNs = nil
            state.connections[number]?.exportID = exportID
        }
    }

    /// The exports served now, in the order they were added.
    public var exportOptions: [NBDExportOptions] { exports.all.map(\.options) }

    /// Whether any listener is open (`nbd-server-start` was given and not stopped).
    public var isListening: Bool { state.withLock { !$0.listeners.isEmpty } }

    /// Removes export `id`: new clients no longer see it at once; once no client uses it (at
    /// once with `.hard`, which disconnects them), a writable export is flushed, detached from
    /// the graph, and `removed` runs (QMP's BLOCK_EXPORT_DELETED). Returns without waiting.
    public func removeExport(id: String, mode: RemoveMode, removed: @escaping @Sendable () async -> Void) throws(NBDServerError) {
        guard let export = exports.remove(id: id) else { throw .noSuchExport(id) }
        if mode == .hard {
            state.withLock { state in
                for entry in state.connections.values where entry.exportID == id { _ = Glibc.shutdown(entry.fd, Int32(SHUT_RDWR)) }
            }
        }
        let control = controller.control
        Task(executorPreference: control) {
            while self.state.withLock({ $0.connections.values.contains { $0.exportID == id } }) {
                await control.sleep(untilNs: MonotonicClock.now() + 10_000_000)
            }
            await self.retire(export)
            await removed()
        }
    }

    /// Flushes a writable export and takes its ports and backend out of the graph.
    private func retire(_ export: NBDServerExport) async {
        if export.options.writable {
            let status = await export.ports[0].submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
            if !status.isOK { log("NBD export '\(export.options.name)': flush at removal failed: \(status)") }
        }
        for port in export.ports { await controller.detach(port) }
        for bitmap in export.bitmaps { await controller.removeUser(of: bitmap) }
        _ = try? await controller.apply(json: .object(["type": "backend-del", "data": .object(["id": .string(export.options.id)])]))
    }

    /// Closes every listener (QMP's nbd-server-stop); connections and exports stay.
    public func stopListening() async {
        let (listeners, loops) = state.withLock { state in
            defer { state.listeners = []; state.acceptLoops = [] }
            return (state.listeners, state.acceptLoops)
        }
        for listener in listeners { listener.shutdown() }
        for loop in loops { await loop.value }
        for listener in listeners { listener.close() }
    }

    func connectionEnded(_ number: Int) {
        state.withLock { _ = $0.connections.removeValue(forKey: number) }
    }

    // MARK: Shutdown

    /// Stops listening, lets every connection finish the requests it has read (new ones are not
    /// read), flushes every writable export and detaches the exports from the graph.
    public func shutdown() async {
        let (listeners, loops, sweeper) = state.withLock { state in
            state.shuttingDown = true
            return (state.listeners, state.acceptLoops, state.sweeper)
        }
        for listener in listeners { listener.shutdown() }
        for loop in loops { await loop.value }
        for listener in listeners { listener.close() }
        for connection in state.withLock({ $0.connections.values.map(\.connection) }) { await connection.stopReceiving() }
        let control = controller.control
        let graceEnd = MonotonicClock.now() + UInt64(settings.shutdownGraceSeconds * 1e9)
        var cutOff = false
        while connectionCount > 0 {
            if !cutOff && MonotonicClock.now() >= graceEnd {
                // Clients not taking their replies: fail their sends so the connections end.
                state.withLock { state in for entry in state.connections.values { _ = Glibc.shutdown(entry.fd, Int32(SHUT_RDWR)) } }
                cutOff = true
            }
            await Task(executorPreference: control) { await control.sleep(untilNs: MonotonicClock.now() + 10_000_000) }.value
        }
        sweeper?.cancel()
        for export in exports.all {
            if export.options.writable {
                let status = await export.ports[0].submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
                if !status.isOK { log("NBD export '\(export.options.name)': flush at shutdown failed: \(status)") }
            }
            for port in export.ports { await controller.detach(port) }
        for bitmap in export.bitmaps { await controller.removeUser(of: bitmap) }
        }
    }
}
