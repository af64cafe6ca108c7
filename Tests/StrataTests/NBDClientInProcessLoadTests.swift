import Foundation
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime
import Testing

/// The nbd node under the built-in load inside the test process (no thread-affine executors:
/// requests carry executor preferences), as the command line drives it.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct NBDClientInProcessLoadTests {
    @Test(arguments: ["qemu-nbd", "nbdkit", "strata"])
    func twoQueuesAtDepth32VerifyInProcess(server tool: String) async throws {
        let harness = try NodeTestHarness("nbd-inproc")
        defer { harness.shutdown() }
        let socket = harness.path("s.sock")
        let image = try harness.createFile("disk.raw", size: 16 << 20)
        let export = try await WritablePeerExport(tool, socket: socket, image: image)
        defer { export.stop() }
        let engine = try Engine(queueCount: 2, cpus: nil)
        do {
            try await engine.controller.apply([
                .addNode(JSONValue.parse(#"{"driver":"nbd","node-name":"remote","server":{"type":"unix","path":"\#(socket)"}}"#)),
                .addBackend(BackendEntry(name: "disk0", nodeName: "remote", writable: true)),
            ])
            var spec = WorkloadSpec()
            spec.mode = .randrw
            spec.verify = true
            spec.queueDepth = 32
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(3000))
            #expect(report.ops == 6000)
            #expect(report.failed == 0)
            #expect(report.verifyFailures == 0)
        } catch {
            await engine.shutdown()
            throw error
        }
        await engine.shutdown()
    }
}
