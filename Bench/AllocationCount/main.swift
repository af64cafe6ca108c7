// Counts heap allocations per request in steady state: runs the load generator for N and then 2N
// requests per queue with malloc counting on, and reports (count(2N) - count(N)) / N, which
// cancels everything a run allocates once (queues, buffers, tasks). Run it with the interposer
// preloaded: LD_PRELOAD=.build/release/libMallocInterposerSwift.so strata-alloc-count [--image F] [--format raw|qcow2] [--ops N]
// With --policy DRIVER a scheduling-policy filter (one tenant per queue) sits under the throttle
// node, so its scheduler's path is counted too.
// With --vhost-user the requests go through a vhost-user-blk export in this process, driven by
// the bench's vhost-user front end over a Unix socket: both sides of the export path are counted.
import Dispatch
import FoundationEssentials
import Glibc
import MallocInterposerSwift
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime
import StrataVhostUserServer

// Synchronous top-level code, so no task exists yet when the default executor is replaced (a
// top-level `await` would make this whole file the body of the async main task).
ThreadAffineExecutors.install()
Task.detached {
    do {
        try await countAllocations()
        exit(EXIT_SUCCESS)
    } catch {
        print("strata-alloc-count: \(error)")
        exit(EXIT_FAILURE)
    }
}
dispatchMain()

func countAllocations() async throws {
    var arguments = CommandLine.arguments.dropFirst()
    var image: String?
    var format = "raw"
    var opsPerRun = 200_000
    var queues = 1
    var vhostUser = false
    var policy: String?
    while let argument = arguments.popFirst() {
        switch argument {
        case "--image": image = arguments.popFirst()
        case "--ops": opsPerRun = Int(arguments.popFirst() ?? "") ?? opsPerRun
        case "--queues": queues = Int(arguments.popFirst() ?? "") ?? queues
        case "--format": format = arguments.popFirst() ?? format
        case "--vhost-user": vhostUser = true
        case "--policy": policy = arguments.popFirst()
        default:
            print("usage: strata-alloc-count [--image FILE] [--format raw|qcow2] [--ops N] [--queues N] [--policy DRIVER] [--vhost-user]")
            exit(2)
        }
    }

    let engine = try Engine(queueCount: queues, cpus: nil)
    let bottom: JSONValue = image.map { .object(["driver": "file", "node-name": "bottom", "filename": .string($0), "cache": "none"]) }
        ?? .object(["driver": "null-co", "node-name": "bottom", "size": "1G"])
    try await engine.controller.apply([
        .addNode(bottom),
        // The format node: raw by default, qcow2 (no backing file) for a qcow2 image.
        .addNode(format == "qcow2" ? .object(["driver": "qcow2", "node-name": "raw0", "file": "bottom", "backing": .null])
                                   : .object(["driver": "raw", "node-name": "raw0", "file": "bottom"])),
    ])
    if let policy {
        let tenants = JSONValue.array((0..<queues).map { _ in .object([:]) })
        try await engine.controller.apply([.addNode(.object(["driver": .string(policy), "node-name": "policy0", "file": "raw0", "tenants": tenants]))])
    }
    try await engine.controller.apply([
        .addNode(.object(["driver": "throttle", "node-name": "throttle0", "file": policy == nil ? "raw0" : "policy0"])),
        .addBackend(BackendEntry(name: "disk0", nodeName: "throttle0", writable: false)),
    ])
    var spec = WorkloadSpec()
    spec.mode = .randread
    let throughVhostUser = vhostUser
    let socket = "/tmp/strata-alloc-count-\(getpid()).sock"
    let exports = VhostUserBlkServer(controller: engine.controller, log: { print($0) })
    if vhostUser {
        try await exports.addExport(VhostUserBlkExportOptions(id: "v0", nodeName: "throttle0", socketPath: socket, queueCount: queues))
    }

    func mallocs(ops: Int) async throws -> (count: Int, report: LoadReport) {
        MallocInterposerSwift.reset()
        MallocInterposerSwift.hook()
        let report = throughVhostUser
            ? try await VhostUserLoadRun.run(socketPath: socket, control: engine.control, queues: engine.queues, spec: spec, length: .opsPerQueue(ops))
            : try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(ops))
        MallocInterposerSwift.unhook()
        return (MallocInterposerSwift.getStatistics().mallocCount, report)
    }

    _ = try await mallocs(ops: opsPerRun / 10)  // warm-up: lazy runtime metadata, first-touch growth
    let single = try await mallocs(ops: opsPerRun)
    let double = try await mallocs(ops: 2 * opsPerRun)
    let extraOps = double.report.ops - single.report.ops
    let perRequest = Double(double.count - single.count) / Double(max(1, extraOps))
    print("""
    {"ops_n": \(single.report.ops), "mallocs_n": \(single.count), "ops_2n": \(double.report.ops), "mallocs_2n": \(double.count), \
    "mallocs_per_request": \(perRequest), "failed": \(single.report.failed + double.report.failed)}
    """)
    await exports.shutdown()
    await engine.shutdown()
}
