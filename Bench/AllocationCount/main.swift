// Counts heap allocations per request in steady state: runs the load generator for N and then 2N
// requests per queue with malloc counting on, and reports (count(2N) - count(N)) / N, which
// cancels everything a run allocates once (queues, buffers, tasks). Run it with the interposer
// preloaded: LD_PRELOAD=.build/release/libMallocInterposerSwift.so strata-alloc-count [--image F] [--format raw|qcow2] [--ops N]
import FoundationEssentials
import Glibc
import MallocInterposerSwift
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime

ThreadAffineExecutors.install()

var arguments = CommandLine.arguments.dropFirst()
var image: String?
var format = "raw"
var opsPerRun = 200_000
var queues = 1
while let argument = arguments.popFirst() {
    switch argument {
    case "--image": image = arguments.popFirst()
    case "--ops": opsPerRun = Int(arguments.popFirst() ?? "") ?? opsPerRun
    case "--queues": queues = Int(arguments.popFirst() ?? "") ?? queues
    case "--format": format = arguments.popFirst() ?? format
    default:
        print("usage: strata-alloc-count [--image FILE] [--format raw|qcow2] [--ops N] [--queues N]")
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
    .addNode(.object(["driver": "throttle", "node-name": "throttle0", "file": "raw0"])),
    .addBackend(BackendEntry(name: "disk0", nodeName: "throttle0", writable: false)),
])
var spec = WorkloadSpec()
spec.mode = .randread

func mallocs(ops: Int) async throws -> (count: Int, report: LoadReport) {
    MallocInterposerSwift.reset()
    MallocInterposerSwift.hook()
    let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(ops))
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
await engine.shutdown()
