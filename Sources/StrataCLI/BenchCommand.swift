import ArgumentParser
import FoundationEssentials
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run the built-in multiqueue guest load generator against a block graph.",
        discussion: """
        With no graph options the graph is: device -> throttle (no limits) -> raw -> null-co.
        --image puts a file node at the bottom instead of null-co; --blockdev (repeatable, QEMU's
        blockdev-add JSON) gives the whole graph, the last node being the device's root unless
        --root names another. --edit-at SECONDS:JSON applies a transaction during the run, e.g.
        --edit-at '2:{"type":"insert-filter","data":{"above":"raw0","filter":{"driver":"throttle","node-name":"t9"}}}'
        """
    )

    @Option(name: .customLong("blockdev"), help: "A node as blockdev-add JSON (repeatable).")
    var blockdevs: [String] = []
    @Option(help: "The node the device attaches to (default: the last --blockdev).")
    var root: String?
    @Option(help: "An image file for a file node at the bottom of the default graph.")
    var image: String?
    @Option(help: "Cache mode of --image: none, writeback, writethrough, directsync, unsafe.")
    var cache = "writeback"
    @Option(help: "Size of the default null-co node (e.g. 1G).")
    var size = "1G"
    @Option(name: .customLong("vhost-user"), help: "Drive a vhost-user-blk back end on this socket (Strata's or qemu-storage-daemon's) instead of an in-process graph.")
    var vhostUser: String?
    @Option(help: "Number of queues, one pinned executor each.")
    var queues = 1
    @Option(help: "CPUs to pin queues to, comma separated (default: queue i on CPU i mod online CPUs).")
    var cpus: String?
    @Option(name: .customLong("numa"), help: "Pin the queues to the CPUs of this NUMA node, in turn (instead of --cpus); their buffers go on that node.")
    var numaNode: Int?
    @Option(name: .customLong("submit-batch"), help: "Most SQEs a queue gathers before entering the kernel (some virtual disks serve bursts slowly).")
    var submitBatch = 4
    @Option(name: .customLong("poll-max-ns"), help: "Nanoseconds an idle queue spins on its ring before it sleeps, adapted as QEMU's iothreads adapt theirs (0: sleep at once).")
    var pollMaxNs: UInt64 = PollMaxNsOption.defaultNs
    @Option(help: "Queue depth per queue.")
    var depth = 32
    @Option(help: "Block size (e.g. 4k).")
    var bs = "4k"
    @Option(help: "read, write, randread, randwrite, randrw or rw.")
    var rw = "randread"
    @Option(help: "Percentage of reads in mixed modes.")
    var rwmixread = 50
    @Option(help: "Run for this many seconds.")
    var seconds: Double?
    @Option(help: "Run this many requests per queue.")
    var ops: Int?
    @Option(help: "Seed of the request streams: the same seed gives the same requests.")
    var seed: UInt64 = 1
    @Flag(help: "Check every read against what this run wrote.")
    var verify = false
    @Option(name: .customLong("edit-at"), help: "SECONDS:JSON, a transaction applied during the run (repeatable).")
    var editsAt: [String] = []
    @Flag(help: "Print one JSON object instead of a table.")
    var json = false
    @Option(help: "Per-node statistics: on (the default) or off, to measure what they cost.")
    var accounting: OnOff = .on

    func validate() throws {
        guard (1...256).contains(queues) else { throw ValidationError("--queues must be between 1 and 256, got \(queues)") }
        guard (1...512).contains(submitBatch) else { throw ValidationError("--submit-batch must be between 1 and 512, got \(submitBatch)") }
        try PollMaxNsOption.validate(pollMaxNs)
        guard (1...4096).contains(depth) else { throw ValidationError("--depth must be between 1 and 4096, got \(depth)") }
        guard WorkloadMode(rawValue: rw) != nil else {
            throw ValidationError("--rw must be one of \(WorkloadMode.allCases.map(\.rawValue).joined(separator: ", ")), got '\(rw)'")
        }
        guard (0...100).contains(rwmixread) else { throw ValidationError("--rwmixread must be between 0 and 100, got \(rwmixread)") }
        guard let blockSize = OptionReader.parseSize(bs), blockSize >= 512, blockSize <= 16 << 20, blockSize % 512 == 0 else {
            throw ValidationError("--bs must be a multiple of 512 between 512 and 16M, got '\(bs)'")
        }
        if seconds != nil && ops != nil { throw ValidationError("give --seconds or --ops, not both") }
        if let seconds, !(seconds > 0 && seconds <= 86_400) { throw ValidationError("--seconds must be in (0, 86400], got \(seconds)") }
        if let ops, ops <= 0 { throw ValidationError("--ops must be positive, got \(ops)") }
        if image != nil && !blockdevs.isEmpty { throw ValidationError("give --image or --blockdev, not both") }
        if vhostUser != nil && (image != nil || !blockdevs.isEmpty || !editsAt.isEmpty) {
            throw ValidationError("--vhost-user drives a back end in another process: --image, --blockdev and --edit-at do not apply")
        }
        _ = try CPUListOption.parse(cpus: cpus, numaNode: numaNode)
        _ = try parsedEdits()
    }

    func parsedEdits() throws -> [TimedEdit] {
        try editsAt.map { text in
            guard let colon = text.firstIndex(of: ":"), let at = Double(text[..<colon]), at >= 0 else {
                throw ValidationError("--edit-at expects SECONDS:JSON, got '\(text.prefix(60))'")
            }
            let json = try JSONValue.parse(String(text[text.index(after: colon)...]))
            _ = try GraphEdit.parseList(json)
            return TimedEdit(atSeconds: at, transaction: json)
        }
    }

    /// The graph as blockdev-add actions and the node the device attaches to.
    func graphActions() throws -> ([JSONValue], String) {
        if !blockdevs.isEmpty {
            let nodes = try blockdevs.map { try JSONValue.parse($0) }
            guard let rootName = root ?? nodes.last.flatMap({ node -> String? in
                if case .string(let name)? = node.objectValue?["node-name"] { return name }
                return nil
            }) else { throw ValidationError("the last --blockdev needs a node-name, or name the root with --root") }
            return (nodes, rootName)
        }
        let bottom: JSONValue
        if let image {
            bottom = .object(["driver": .string("file"), "node-name": .string("file0"), "filename": .string(image), "cache": .string(cache)])
        } else {
            bottom = .object(["driver": .string("null-co"), "node-name": .string("null0"), "size": .string(size)])
        }
        let bottomName = image == nil ? "null0" : "file0"
        return ([
            bottom,
            .object(["driver": .string("raw"), "node-name": .string("raw0"), "file": .string(bottomName)]),
            .object(["driver": .string("throttle"), "node-name": .string("throttle0"), "file": .string("raw0")]),
        ], "throttle0")
    }

    func run() async throws {
        var spec = WorkloadSpec()
        spec.mode = WorkloadMode(rawValue: rw)!
        spec.readPercent = rwmixread
        spec.blockSizeBytes = Int(OptionReader.parseSize(bs)!)
        spec.queueDepth = depth
        spec.seed = seed
        spec.verify = verify
        let length: RunLength = ops.map { .opsPerQueue($0) } ?? .seconds(seconds ?? 3)
        let (actions, rootName) = try graphActions()
        let edits = try parsedEdits()

        let engine = try Engine(queueCount: queues, cpus: try CPUListOption.parse(cpus: cpus, numaNode: numaNode), submitBatchLimit: UInt32(submitBatch), pollMaxNs: pollMaxNs, accounting: accounting == .on)
        let outcome: Result<LoadReport, Error>
        do {
            if let vhostUser {
                do {
                    outcome = .success(try await VhostUserLoadRun.run(socketPath: vhostUser, control: engine.control, queues: engine.queues,
                                                                      spec: spec, length: length))
                } catch {
                    throw ValidationError("\(error)")
                }
            } else {
                var setup: [GraphEdit] = actions.map { .addNode($0) }
                setup.append(.addBackend(BackendEntry(name: "disk0", nodeName: rootName, writable: spec.mode.writes)))
                try await engine.controller.apply(setup)
                outcome = .success(try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: length, edits: edits))
            }
        } catch {
            outcome = .failure(error)
        }
        await engine.shutdown()
        let report = try outcome.get()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(LoadReportTable.render(report))
        }
        if report.failed > 0 || report.lost > 0 || report.verifyFailures > 0 { throw ExitCode(1) }
    }
}
