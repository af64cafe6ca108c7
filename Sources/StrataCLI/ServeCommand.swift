import ArgumentParser
import Glibc
import StrataControl
import StrataEngine
import StrataGraph
import StrataImageTools
import StrataNBDServer
import StrataRuntime
import StrataVhostUserServer

/// `strata serve`: a storage daemon in qemu-storage-daemon's style. Builds a graph from
/// `--blockdev` (or opens `--image`), exports nodes over NBD and runs until SIGTERM or SIGINT,
/// then finishes in-flight requests, flushes and exits.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve block nodes over NBD (qemu-storage-daemon style).",
        discussion: """
        Either give the graph and the server as qemu-storage-daemon takes them:
          strata serve --blockdev '{"driver":"file","node-name":"f0","filename":"disk.img"}' \\
                       --blockdev driver=raw,node-name=disk,file=f0 \\
                       --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=10809 \\
                       --export type=nbd,id=e0,node-name=disk,writable=on
        or one image in one command (export name "" unless --export-name):
          strata serve --image disk.qcow2 --nbd 127.0.0.1:10809
        Once listening, one line per listener goes to standard output:
          strata serve: NBD server listening on ADDRESS
        """
    )

    /// Signals that end the daemon cleanly.
    static let terminationSignals = [SIGTERM, SIGINT, SIGHUP]
    /// Posted to the signal waiter by QMP `quit` (no real signal has number 0).
    static let quitSignal: Int32 = 0

    @Option(name: .customLong("blockdev"), help: "A node as blockdev-add JSON or key=value list (repeatable).")
    var blockdevs: [String] = []
    @Option(name: .customLong("nbd-server"), help: "addr.type=inet,addr.host=H,addr.port=P or addr.type=unix,addr.path=S [,max-connections=N] (repeatable).")
    var nbdServers: [String] = []
    @Option(name: .customLong("export"), help: """
        type=nbd,id=ID,node-name=NODE[,name=NAME][,writable=on|off][,description=TEXT][,allocation-depth=on|off] or \
        type=vhost-user-blk,id=ID,node-name=NODE,addr.type=unix,addr.path=PATH[,writable=on|off][,num-queues=N]\
        [,logical-block-size=N] (repeatable). Either takes Strata's x-tenant=N: the tag its requests carry for \
        a scheduling policy (a vhost-user-blk export's virtqueue i carries N+i).
        """)
    var exportSpecs: [String] = []
    @Option(name: .customLong("chardev"), help: "socket,id=ID,path=PATH,server=on,wait=off (or host=H,port=P): a monitor socket (repeatable).")
    var chardevs: [String] = []
    @Option(name: .customLong("monitor"), help: "chardev=ID[,mode=control][,pretty=on|off]: serve QMP on that socket (repeatable).")
    var monitorSpecs: [String] = []
    @Option(name: .customLong("object"), help: "throttle-group,id=ID,limits.iops-total=N,...: a throttle group (repeatable).")
    var objects: [String] = []
    @Option(name: .customLong("stats"), help: "unix:PATH[,interval-ms=N]: stream per-node statistics as JSON lines (watch with `strata stats PATH`).")
    var statsSpecs: [String] = []
    @Option(help: "Write the daemon's process ID here once it serves; removed at exit.")
    var pidfile: String?

    @Option(help: "Serve this image (format probed, backing chain opened) as one export.")
    var image: String?
    @Option(help: "Format of --image: raw or qcow2 (default: probed).")
    var format: String?
    @Flag(name: .customLong("read-only"), help: "Export --image read-only.")
    var readOnly = false
    @Option(name: .customLong("export-name"), help: "Name of the --image export (default \"\").")
    var exportName = ""
    @Option(name: .customLong("nbd"), help: "Where --image is served: HOST:PORT, [V6]:PORT or unix:PATH (repeatable).")
    var nbdAddresses: [String] = []
    @Option(help: "Cache mode of --image: none, writeback, writethrough, directsync, unsafe.")
    var cache = "writeback"

    @Option(help: "Number of queues (one pinned executor each) connections are spread over (default: online CPUs, at most 8).")
    var queues: Int?
    @Option(help: "CPUs the queues are pinned to, comma separated (default: queue i on CPU i mod online CPUs). A queue's buffers and a vhost-user virtqueue's bounce buffers go on its CPU's NUMA node.")
    var cpus: String?
    @Option(name: .customLong("numa"), help: "Pin the queues to the CPUs of this NUMA node, in turn (instead of --cpus); their buffers go on that node.")
    var numaNode: Int?
    @Option(name: .customLong("poll-max-ns"), help: "Nanoseconds an idle queue spins on its ring before it sleeps, adapted to how long it stays idle as QEMU's iothreads adapt theirs (0: sleep at once).")
    var pollMaxNs: UInt64 = PollMaxNsOption.defaultNs
    @Option(name: .customLong("handshake-limit"), help: "Seconds a client may take to finish the handshake (0: no limit).")
    var handshakeLimit: Double = 10

    func validate() throws {
        if image == nil {
            // With a monitor, everything may come later over QMP, as with qemu-storage-daemon.
            let controlled = !monitorSpecs.isEmpty
            if blockdevs.isEmpty && !controlled { throw ValidationError("give --image, or the graph with --blockdev, or a --monitor") }
            let onlyVhostUser = !exportSpecs.isEmpty && exportSpecs.allSatisfy { $0.hasPrefix("type=vhost-user-blk") }
            if nbdServers.isEmpty && !controlled && !onlyVhostUser { throw ValidationError("give --nbd-server (or --image with --nbd)") }
            if exportSpecs.isEmpty && !controlled { throw ValidationError("give at least one --export type=nbd,... or type=vhost-user-blk,...") }
            if !nbdAddresses.isEmpty { throw ValidationError("--nbd goes with --image; use --nbd-server with --blockdev") }
        } else {
            if !blockdevs.isEmpty || !exportSpecs.isEmpty { throw ValidationError("give --image or --blockdev/--export, not both") }
            if nbdAddresses.isEmpty && nbdServers.isEmpty { throw ValidationError("--image needs --nbd HOST:PORT or unix:PATH") }
        }
        for spec in statsSpecs {
            do { _ = try StatsStreamAddress(parsing: spec) } catch { throw ValidationError(error.description) }
        }
        if let queues, !(1...256).contains(queues) { throw ValidationError("--queues must be 1-256, got \(queues)") }
        _ = try CPUListOption.parse(cpus: cpus, numaNode: numaNode)
        try PollMaxNsOption.validate(pollMaxNs)
        if !(handshakeLimit >= 0 && handshakeLimit <= 86400) { throw ValidationError("--handshake-limit must be 0-86400 seconds") }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let (actions, exports, vhostUserExports) = try plan()
        let control = try ServeMonitorOptions(chardevs: chardevs, monitors: monitorSpecs, objects: objects)
        var listeners: [StorageDaemon.NBDListener] = []
        for spec in nbdServers { listeners.append(try serverListener(spec)) }
        for text in nbdAddresses { listeners.append(StorageDaemon.NBDListener(address: try NBDServerAddress.parse(short: text))) }

        let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let daemon = try StorageDaemon(
            plan: {
                var plan = StorageDaemon.Plan(queueCount: queues ?? max(1, min(8, online)), blockdevActions: actions, nbdListeners: listeners,
                                              nbdExports: exports, vhostUserExports: vhostUserExports, handshakeLimitSeconds: handshakeLimit)
                plan.cpus = try CPUListOption.parse(cpus: cpus, numaNode: numaNode)
                plan.pollMaxNs = pollMaxNs
                return plan
            }(),
            log: { StandardError.print($0) })
        let signals = try SignalWaiter(signals: Self.terminationSignals)
        let monitor = QMPMonitor(daemon: daemon) { signals.post(Self.quitSignal) }
        do {
            // Objects first: --blockdev nodes may name them (throttle groups, secrets).
            for group in control.throttleGroups { try await monitor.addThrottleGroup(id: group.id, limits: group.limits) }
            for secret in control.secrets { try await monitor.addSecret(id: secret.id, properties: secret.properties) }
        } catch {
            await daemon.shutdown()
            throw ValidationError("\(error)")
        }
        let bound: [NBDServerAddress]
        do { bound = try await daemon.start() } catch { throw ValidationError("\(error)") }  // start() shut the daemon down
        var streams: [StatsStream] = []
        func stop() async {
            for stream in streams { await stream.shutdown() }
            await monitor.shutdown()
            await daemon.shutdown()
        }
        do {
            for address in control.monitors {
                print("strata serve: QMP monitor listening on \(try await monitor.listen(on: address))")
            }
            for spec in statsSpecs {
                let address = try StatsStreamAddress(parsing: spec)
                let stream = StatsStream(address: address, controller: daemon.engine.controller, control: daemon.engine.control)
                try await stream.start()
                streams.append(stream)
                print("strata serve: statistics every \(address.intervalMs) ms on unix:\(address.path)")
            }
        } catch {
            await stop()
            throw ValidationError("\(error)")
        }
        for address in bound { print("strata serve: NBD server listening on \(address)") }
        for export in vhostUserExports { print("strata serve: vhost-user-blk export '\(export.id)' listening on unix:\(export.socketPath)") }
        fflush(nil)
        if let pidfile {
            do { try writePidfile(pidfile) } catch {
                await stop()
                throw ValidationError("\(error)")
            }
        }
        let executor = daemon.engine.control
        let signal = try await Task(executorPreference: executor) { try await signals.wait() }.value
        let cause = signal == Self.quitSignal ? "quit" : signal == SIGINT ? "SIGINT" : signal == SIGHUP ? "SIGHUP" : "SIGTERM"
        StandardError.print("strata serve: \(cause): finishing in-flight requests")
        await stop()
        if let pidfile { unlink(pidfile) }
    }

    /// The graph's blockdev-add actions and the exports to add over it.
    private func plan() throws -> (actions: [JSONValue], exports: [NBDExportOptions], vhostUser: [VhostUserBlkExportOptions]) {
        if let image {
            let options = ImageOpenOptions(format: format, readOnly: readOnly, cacheMode: cache)
            let (actions, top) = try ImageSession.blockdevActions(for: image, options: options)
            return (actions, [NBDExportOptions(id: "export0", nodeName: top, name: exportName, writable: !readOnly)], [])
        }
        var actions: [JSONValue] = []
        for text in blockdevs {
            actions.append(.object(["type": "blockdev-add", "data": try KeyValueOptions.blockdev(text)]))
        }
        var exports: [NBDExportOptions] = []
        var vhostUser: [VhostUserBlkExportOptions] = []
        for spec in exportSpecs where spec.hasPrefix("type=vhost-user-blk") {
            vhostUser.append(try vhostUserExport(spec))
        }
        for spec in exportSpecs where !spec.hasPrefix("type=vhost-user-blk") {
            let keys = try KeyValueOptions.dictionary(spec, option: "--export",
                                                      allowed: Set(["type", "id", "node-name", "name", "writable", "description", "allocation-depth", "x-tenant"]
                                                          + (0..<64).map { "bitmaps.\($0)" }))
            guard keys["type"] == "nbd" else { throw ValidationError("--export: only type=nbd is supported, got '\(keys["type"] ?? "")'") }
            guard let id = keys["id"], !id.isEmpty else { throw ValidationError("--export: needs id=") }
            guard let node = keys["node-name"], !node.isEmpty else { throw ValidationError("--export \(id): needs node-name=") }
            var export = NBDExportOptions(
                id: id, nodeName: node, name: keys["name"], description: keys["description"] ?? "",
                writable: try KeyValueOptions.onOff(keys["writable"], key: "writable", option: "--export \(id)", default: false),
                allocationDepth: try KeyValueOptions.onOff(keys["allocation-depth"], key: "allocation-depth", option: "--export \(id)", default: true),
                // QSD's list syntax: bitmaps.0=NAME, bitmaps.1=NAME, ...
                bitmaps: (0..<64).compactMap { keys["bitmaps.\($0)"] })
            export.tenantTag = try Self.tenantTag(keys["x-tenant"], export: id)
            exports.append(export)
        }
        return (actions, exports, vhostUser)
    }

    /// `type=vhost-user-blk,...` as qemu-storage-daemon takes it.
    private func vhostUserExport(_ spec: String) throws -> VhostUserBlkExportOptions {
        let keys = try KeyValueOptions.dictionary(spec, option: "--export", allowed: [
            "type", "id", "node-name", "addr.type", "addr.path", "writable", "num-queues", "logical-block-size", "writethrough", "x-tenant",
        ])
        guard let id = keys["id"], !id.isEmpty else { throw ValidationError("--export: needs id=") }
        guard let node = keys["node-name"], !node.isEmpty else { throw ValidationError("--export \(id): needs node-name=") }
        guard keys["addr.type"] == "unix", let path = keys["addr.path"], !path.isEmpty else {
            throw ValidationError("--export \(id): vhost-user-blk needs addr.type=unix,addr.path=PATH")
        }
        func integer(_ key: String, default value: Int) throws -> Int {
            guard let text = keys[key] else { return value }
            guard let number = Int(text) else { throw ValidationError("--export \(id): \(key)=\(text) is not a number") }
            return number
        }
        var options = VhostUserBlkExportOptions(
            id: id, nodeName: node, socketPath: path,
            writable: try KeyValueOptions.onOff(keys["writable"], key: "writable", option: "--export \(id)", default: false),
            queueCount: try integer("num-queues", default: 1), logicalBlockSize: try integer("logical-block-size", default: 512))
        options.tenantTagBase = try Self.tenantTag(keys["x-tenant"], export: id)
        if let problem = options.problem { throw ValidationError("--export \(id): \(problem)") }
        return options
    }

    /// Strata's `x-tenant=N` on an export: the tag its requests carry for a scheduling policy.
    static func tenantTag(_ text: String?, export id: String) throws -> UInt32 {
        guard let text else { return 0 }
        guard let tag = UInt32(text) else { throw ValidationError("--export \(id): x-tenant=\(text) is not a tag (0 to \(UInt32.max))") }
        return tag
    }

    private func serverListener(_ spec: String) throws -> StorageDaemon.NBDListener {
        let keys = try KeyValueOptions.dictionary(spec, option: "--nbd-server",
                                                  allowed: ["addr.type", "addr.host", "addr.port", "addr.path", "max-connections"])
        var maxConnections = 0
        if let text = keys["max-connections"] {
            guard let value = Int(text), value >= 0 else { throw ValidationError("--nbd-server: max-connections=\(text) is not a count") }
            maxConnections = value
        }
        return StorageDaemon.NBDListener(address: try NBDServerAddress.parse(keys: keys), maxConnections: maxConnections)
    }

    private func writePidfile(_ path: String) throws {
        let text = "\(getpid())\n"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("pidfile \(path)", errno: errno) }
        defer { close(fd) }
        guard text.withCString({ write(fd, $0, strlen($0)) }) == text.utf8.count else { throw SystemError("write pidfile \(path)", errno: errno) }
    }
}
