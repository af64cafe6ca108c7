import Glibc
import StrataEngine
import StrataFormatting
import StrataGraph
import StrataJobs
import StrataRuntime

/// The QMP control plane of a storage daemon: listeners, client sessions, the command table and
/// event delivery. It lives on the control executor, where the graph controller lives, so a
/// command becomes one call on the controller (a transaction or a query) and never touches a
/// queue; queues only see the versions a transaction hands them. See design/control.md.
public actor QMPMonitor {
    /// The QEMU version Strata's QMP speaks (qemu-storage-daemon 7.2's commands and replies).
    static let qemuVersion = (major: Int64(7), minor: Int64(2), micro: Int64(0))
    static let package = "strata"
    /// Clients served at once (each holds up to 128 KiB of buffers); QEMU serves one per socket.
    static let maxSessions = 64

    public nonisolated let unownedExecutor: UnownedSerialExecutor
    let daemon: StorageDaemon
    private let onQuit: @Sendable () -> Void
    private var listeners: [(listener: RingListener, loop: Task<Void, Never>)] = []
    private var sessions: [Int: QMPSession] = [:]
    private var sessionTasks: [Int: Task<Void, Never>] = [:]
    private var nextSession = 0
    private var stopping = false
    let commands: [String: QMPCommand]
    /// Throttle groups made by object-add, by id.
    var objects: [String: QMPObject] = [:]
    /// The daemon's jobs; their events go to every client.
    let jobs: JobManager

    /// `onQuit` runs once a client's `quit` has been answered: the daemon then stops as on SIGTERM.
    public init(daemon: StorageDaemon, onQuit: @escaping @Sendable () -> Void) {
        self.daemon = daemon
        self.onQuit = onQuit
        unownedExecutor = daemon.engine.control.asUnownedSerialExecutor()
        commands = Dictionary(uniqueKeysWithValues: QMPCommandTable.all.map { ($0.name, $0) })
        let relay = JobEventRelay()
        jobs = JobManager(control: daemon.engine.control) { event in await relay.monitor?.emit(QMPEvent(event.name, data: event.data)) }
        relay.monitor = self
    }

    /// Starts listening; a Unix socket is created mode 0600 (an existing socket file is replaced,
    /// as QEMU's chardev does). Returns a description of the address bound (a TCP port 0 resolved).
    @discardableResult
    public func listen(on address: QMPMonitorAddress) throws -> String {
        let listener: RingListener
        let bound: String
        switch address.endpoint {
        case .unix(let path):
            var status = stat()
            if lstat(path, &status) == 0 && (status.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
            let previous = umask(0o177)
            defer { umask(previous) }
            listener = try RingListener.unix(path: path)
            chmod(path, 0o600)
            bound = "unix:\(path)"
        case .tcp(let host, let port):
            listener = try RingListener.tcp(host: host, port: port)
            bound = "\(host):\(listener.port ?? port)"
        }
        let pretty = address.pretty
        let loop = Task { await self.acceptLoop(listener, pretty: pretty) }
        listeners.append((listener, loop))
        return bound
    }

    private func acceptLoop(_ listener: RingListener, pretty: Bool) async {
        while !stopping {
            let socket: RingSocket
            do { socket = try await listener.accept() } catch {
                if stopping { return }
                if error.errno == EMFILE || error.errno == ENFILE || error.errno == ENOMEM {
                    await daemon.engine.control.sleep(untilNs: MonotonicClock.now() + 100_000_000)
                    continue
                }
                return
            }
            guard sessions.count < Self.maxSessions else {
                // Bounded memory: past the limit a client is refused rather than queued.
                try? await socket.close()
                continue
            }
            let number = nextSession
            nextSession += 1
            let session = QMPSession(number: number, socket: socket, monitor: self, control: daemon.engine.control, pretty: pretty)
            sessions[number] = session
            sessionTasks[number] = Task { await session.run() }
        }
    }

    func sessionEnded(_ number: Int) {
        sessions[number] = nil
        sessionTasks[number] = nil
    }

    /// Connected clients now (for tests and statistics).
    public var sessionCount: Int { sessions.count }

    /// Sends `event` to every negotiated client.
    public func emit(_ event: QMPEvent) async {
        for session in sessions.values { await session.deliver(event) }
    }

    /// Runs one command in-process, as a client's would run: for the offline tools, which do
    /// their work through the same command implementations (`strata img bitmap`).
    public func run(_ name: String, arguments: [String: JSONValue] = [:]) async throws(QMPError) -> OrderedJSON {
        do {
            return try await execute(name, arguments: arguments)
        } catch let error as QMPError {
            throw error
        } catch {
            throw QMPError("\(error)")
        }
    }

    func execute(_ name: String, arguments: [String: JSONValue]) async throws -> OrderedJSON {
        guard let command = commands[name] else { throw QMPError.commandNotFound(name) }
        var reader = QMPArguments(arguments)
        return try await command.run(self, &reader)
    }

    func quit() {
        onQuit()
    }

    /// Stops listening, cancels the jobs (waiting for them to conclude) and ends every session.
    public func shutdown() async {
        stopping = true
        await jobs.cancelAllAndWait()
        for (listener, loop) in listeners {
            listener.shutdown()
            await loop.value
            listener.close()
        }
        listeners = []
        for session in sessions.values { _ = Glibc.shutdown(session.socketFD, Int32(SHUT_RDWR)) }
        for task in Array(sessionTasks.values) { await task.value }
    }
}

/// Hands job events to the monitor, which the job manager (made in the monitor's init) cannot
/// capture directly.
private final class JobEventRelay: Sendable {
    private let target = Locked<WeakMonitor>(WeakMonitor())

    private struct WeakMonitor { weak var monitor: QMPMonitor? }

    var monitor: QMPMonitor? {
        get { target.withLock { $0.monitor } }
        set { target.withLock { $0.monitor = newValue } }
    }
}
