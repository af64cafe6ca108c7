import Glibc
import StrataGraph
import StrataRuntime

/// `--stats unix:PATH,interval-ms=N`: every interval, one JSON line of per-node deltas and
/// latency percentiles (`StatsSample`) to every client of a Unix socket. It runs on the control
/// executor and reads the statistics as a query does, so the queues never notice it. A client that
/// does not keep up misses samples (each client has at most one line in flight); none is queued.
public actor StatsStream {
    static let maxClients = 64

    public nonisolated let unownedExecutor: UnownedSerialExecutor
    private let control: QueueExecutor
    private let controller: GraphController
    private let address: StatsStreamAddress
    private var listener: RingListener?
    /// Connected clients by descriptor, with the send in flight to each, if any.
    private var clients: [Int32: Task<Void, Never>?] = [:]
    private var tasks: [Task<Void, Never>] = []
    private var stopping = false
    private var previous: [String: NodeStatsSnapshot] = [:]
    private var previousNs: UInt64 = 0
    /// Samples written so far (for tests).
    public private(set) var samples = 0

    public init(address: StatsStreamAddress, controller: GraphController, control: QueueExecutor) {
        self.address = address
        self.controller = controller
        self.control = control
        unownedExecutor = control.asUnownedSerialExecutor()
    }

    /// Listens (the socket is mode 0600, a stale one replaced) and starts sampling.
    public func start() throws {
        var status = stat()
        if lstat(address.path, &status) == 0 && (status.st_mode & S_IFMT) == S_IFSOCK { unlink(address.path) }
        let previousMask = umask(0o177)
        defer { umask(previousMask) }
        let listener = try RingListener.unix(path: address.path)
        self.listener = listener
        previous = [:]
        previousNs = CycleClock.now()
        tasks.append(Task { await self.acceptLoop(listener) })
        tasks.append(Task { await self.sampleLoop() })
    }

    public var clientCount: Int { clients.count }

    private func acceptLoop(_ listener: RingListener) async {
        while !stopping {
            guard let socket = try? await listener.accept() else {
                if stopping { return }
                await control.sleep(untilNs: MonotonicClock.now() + 100_000_000)
                continue
            }
            guard clients.count < Self.maxClients else {
                try? await socket.close()
                continue
            }
            clients[socket.fd] = .some(nil)
        }
    }

    private func sampleLoop() async {
        var nextNs = MonotonicClock.now()
        while !stopping {
            nextNs += UInt64(address.intervalMs) * 1_000_000
            await control.sleep(untilNs: nextNs)
            if stopping { return }
            let nodes = await controller.statisticsOfAllNodes()
            let nowNs = CycleClock.now()
            var wall = timespec()
            clock_gettime(CLOCK_REALTIME, &wall)
            let line = StatsSample.line(nodes: nodes, previous: previous, intervalNs: nowNs - previousNs,
                                        wallNs: UInt64(wall.tv_sec) * 1_000_000_000 + UInt64(wall.tv_nsec))
            previous = Dictionary(uniqueKeysWithValues: nodes.map { ($0.name, $0.stats) })
            previousNs = nowNs
            samples += 1
            for (fd, inFlight) in clients where inFlight == nil {
                clients[fd] = Task { await self.send(line, to: RingSocket(fd: fd)) }
            }
        }
    }

    private func send(_ line: String, to socket: RingSocket) async {
        let bytes = Array(line.utf8)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 16)
        defer { buffer.deallocate() }
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        let sent: Bool
        do {
            // The buffer is this task's until the send completes.
            try await socket.sendAll(from: buffer, count: bytes.count)
            sent = true
        } catch {
            sent = false
        }
        if stopping { return }
        if sent {
            clients[socket.fd] = .some(nil)
        } else {
            clients[socket.fd] = nil
            try? await socket.close()
        }
    }

    /// Stops sampling, disconnects every client and removes the socket.
    public func shutdown() async {
        stopping = true
        listener?.shutdown()
        for fd in clients.keys { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        for task in tasks { await task.value }
        for case let send? in clients.values { await send.value }
        tasks = []
        listener?.close()
        listener = nil
        for fd in clients.keys { Glibc.close(fd) }
        clients = [:]
    }
}
