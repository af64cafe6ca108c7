import Foundation
import Glibc
import StrataControl
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime
import Testing
@testable import StrataRBD

/// A one-node Ceph cluster (scripts/ceph-mini: a monitor and a memstore OSD, no auth) for one test.
private final class CephCluster: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; `stop` runs once, at the test's end.
    let directory: String
    var conf: String { directory + "/ceph.conf" }

    init(_ name: String) async throws {
        directory = FileManager.default.temporaryDirectory.path + "/strata-ceph-\(name)-\(getpid())"
        let log = directory + ".log"
        // Output to a file, not a pipe: the daemons the script starts keep its descriptors open,
        // and a pipe would never reach its end.
        let (status, output) = await Self.script("start", directory: directory, log: log)
        guard status == 0 else {
            stop()
            throw NBDServerError("ceph-mini start failed (\(status)): \(output)")
        }
    }

    /// Runs scripts/ceph-mini with system(3) on a Dispatch thread: the daemons it starts outlive
    /// it, and Foundation's Process never reported the script's exit under them.
    private static func script(_ verb: String, directory: String, log: String) async -> (Int32, String) {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let command = "CEPH_DIR='\(directory)' bash '\(root.appendingPathComponent("scripts/ceph-mini").path)' \(verb) > '\(log)' 2>&1 < /dev/null"
        let status: Int32 = await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: system(command)) }
        }
        return (status, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }

    func stop() {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        _ = system("CEPH_DIR='\(directory)' bash '\(root.appendingPathComponent("scripts/ceph-mini").path)' stop > /dev/null 2>&1 < /dev/null")
        try? FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.removeItem(atPath: directory + ".log")
    }

    func filename(_ image: String) -> String { "rbd:rbd/\(image):conf=\(conf)" }

    @discardableResult
    func rbd(_ arguments: [String]) async throws -> String {
        let result = try await QemuTool.run("rbd", ["-c", conf] + arguments)
        try #require(result.status == 0, "rbd \(arguments.joined(separator: " ")): \(result.output)")
        return result.output
    }

    var osdPid: pid_t? {
        (try? String(contentsOfFile: directory + "/run/osd.0.pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}

/// The rbd protocol node against a real Ceph cluster, judged by Ceph's own `rbd` tool and QEMU's
/// rbd driver.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RbdTests {
    @Test func filenamesAndOptionsParseAsQemuReadsThem() throws {
        let plain = try RbdLocation(filename: "rbd:pool/image", nodeName: "n")
        #expect(plain.pool == "pool" && plain.image == "image" && plain.snapshot == nil && plain.namespace == nil)
        let full = try RbdLocation(filename: #"rbd:p/ns/im\:age@snap:conf=/etc/c\:f:id=admin:mon_host=10.0.0.1\:6789"#, nodeName: "n")
        #expect(full.pool == "p" && full.namespace == "ns" && full.image == "im:age" && full.snapshot == "snap")
        #expect(full.conf == "/etc/c:f" && full.user == "admin")
        #expect(full.settings.map(\.key) == ["mon_host"] && full.settings.map(\.value) == ["10.0.0.1:6789"])
        func refusal(_ filename: String) -> String { refusalText { _ = try RbdLocation(filename: filename, nodeName: "n") } }
        #expect(refusal("rbd:image") == "n: Parameter 'filename' expects pool/image or pool/namespace/image, got 'image'")
        #expect(refusal("rbd:p/i:conf") == "n: Parameter 'filename' expects key=value, got 'conf'")
        #expect(refusal("rbd:p/i@a@b") == "n: Parameter 'filename' names more than one snapshot: 'i@a@b'")
        // key-secret names a secret object, read when the node opens.
        var reader = OptionReader(nodeName: "n", options: ["pool": "p", "image": "i", "key-secret": "sec0"])
        #expect(try RbdNodeConfiguration(parsing: &reader).location.keySecret == "sec0")
        reader = OptionReader(nodeName: "n", options: ["pool": "p", "image": "i", "encrypt": ["format": "luks"]])
        #expect(throws: GraphError.self) { _ = try RbdNodeConfiguration(parsing: &reader) }
        reader = OptionReader(nodeName: "n", options: ["pool": "p", "image": "i", "server": [["host": "h1", "port": "3300"], ["host": "::1"]]])
        let configuration = try RbdNodeConfiguration(parsing: &reader)
        #expect(configuration.location.monitorHosts == "h1:3300;[::1]:6789")
        // QEMU's direct cache modes turn librbd's client cache off.
        reader = OptionReader(nodeName: "n", options: ["pool": "p", "image": "i", "cache": ["direct": true]])
        #expect(try RbdNodeConfiguration(parsing: &reader).location.settings.contains { $0.key == "rbd_cache" && $0.value == "false" })
        reader = OptionReader(nodeName: "n", options: ["filename": "rbd:p/i", "cache.direct": false])
        #expect(try RbdNodeConfiguration(parsing: &reader).location.settings.isEmpty)
    }

    @Test func dataMovesBothWaysBetweenStrataAndCephsTools() async throws {
        let cluster = try await CephCluster("data")
        defer { cluster.stop() }
        let scratch = try ScratchDirectory("rbd-data")
        // Created by strata, written by strata, read by rbd export and by QEMU's rbd driver.
        let created = try await QemuTool.strata(["img", "create", "-f", "rbd", cluster.filename("a"), "16M"])
        #expect(created.contains("fmt=rbd size=16777216"))
        #expect(try await cluster.rbd(["info", "rbd/a"]).contains("size 16 MiB"))
        try await QemuTool.strata(["io", "-c", "write -P 0x5a 1M 2M", "-c", "write -z 2M 64k", cluster.filename("a")])
        let reference = scratch.path("reference.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", reference, "16M"])
        #expect(try await QemuTool.io("write -P 0x5a 1M 2M", reference))
        #expect(try await QemuTool.io("write -z 2M 64k", reference))
        let exported = scratch.path("exported.raw")
        try await cluster.rbd(["export", "rbd/a", exported])
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, exported])
        let converted = scratch.path("converted.raw")
        try await QemuTool.require("qemu-img", ["convert", "-f", "rbd", "-O", "raw", cluster.filename("a"), converted])
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, converted])
        // The reverse: written by rbd import and by qemu-img convert, read by strata.
        try await cluster.rbd(["import", reference, "rbd/b"])
        let back = scratch.path("back.raw")
        try await QemuTool.strata(["img", "convert", "-O", "raw", cluster.filename("b"), back])
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, back])
        try await cluster.rbd(["create", "--size", "16M", "rbd/c"])
        try await QemuTool.require("qemu-img", ["convert", "-n", "-f", "raw", "-O", "rbd", reference, cluster.filename("c")])
        try await QemuTool.strata(["io", "-c", "read -P 0x5a 1M 1M", "-c", "read -P 0 2M 64k", "-c", "read -P 0x5a 2112k 960k", "-c", "read -P 0 0 1M",
                          cluster.filename("c")])
        // And strata img convert into rbd, judged by qemu-img compare through QEMU's driver.
        try await cluster.rbd(["create", "--size", "16M", "rbd/d"])
        try await QemuTool.strata(["img", "convert", "-n", "-f", "raw", "-O", "raw", reference, cluster.filename("d")])
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "rbd", reference, cluster.filename("d")])
        // Allocation as QEMU's rbd driver reports it (librbd's diff, whole objects).
        let ours = try await QemuTool.strata(["img", "map", "--output=json", "-f", "raw", cluster.filename("a")])
        let theirs = try await QemuTool.run("qemu-img", ["map", "--output=json", "-f", "raw", cluster.filename("a")])
        #expect(ours.trimmingCharacters(in: .whitespacesAndNewlines) == theirs.output.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    @Test func snapshotsReadTheirPastAndRefuseWrites() async throws {
        let cluster = try await CephCluster("snap")
        defer { cluster.stop() }
        try await QemuTool.strata(["img", "create", "-f", "rbd", cluster.filename("a"), "8M"])
        try await QemuTool.strata(["io", "-c", "write -P 0x11 0 1M", cluster.filename("a")])
        try await cluster.rbd(["snap", "create", "rbd/a@before"])
        try await QemuTool.strata(["io", "-c", "write -P 0x22 0 1M", cluster.filename("a")])
        try await QemuTool.strata(["io", "-r", "-c", "read -P 0x11 0 1M", "rbd:rbd/a@before:conf=\(cluster.conf)"])
        try await QemuTool.strata(["io", "-c", "read -P 0x22 0 1M", cluster.filename("a")])
        let write = try await QemuTool.run(CommandLineTests.binary, ["io", "-c", "write -P 0x33 0 4k", "rbd:rbd/a@before:conf=\(cluster.conf)"])
        #expect(write.output.contains("Read-only") || write.output.contains("read-only") || write.status != 0, "\(write.output)")
        #expect(try await QemuTool.io("read -P 0x11 0 1M", "rbd:rbd/a@before:conf=\(cluster.conf)", extra: ["-r"]))
    }

    @Test func resizeAndTwoQueuesOfVerifiedLoadOnOneImage() async throws {
        let cluster = try await CephCluster("load")
        defer { cluster.stop() }
        try await cluster.rbd(["create", "--size", "32M", "rbd/a"])
        let node = #"{"driver":"rbd","node-name":"remote","pool":"rbd","image":"a","conf":"\#(cluster.conf)"}"#
        let report = try await QemuTool.strata(["bench", "--json", "--blockdev", node, "--queues", "2", "--depth", "16", "--rw", "randrw",
                                       "--verify", "--ops", "1500"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(report.utf8)) as? [String: Any])
        #expect(json["ops"] as? Int == 3000)
        #expect(json["failed"] as? Int == 0)
        #expect(json["verify_failures"] as? Int == 0)
        // Live resize through the node (QMP's block_resize path): the cluster and every queue see it.
        let engine = try Engine(queueCount: 1, cpus: nil)
        do {
            try await engine.controller.apply(json: JSONValue.parse("[{\"type\":\"blockdev-add\",\"data\":\(node)}]"))
            let state = try #require(try await engine.controller.state(of: "remote") as? any ResizableNodeState)
            try await state.resize(to: 48 << 20)
            #expect(state.sizeBytes == 48 << 20)
            #expect(try await cluster.rbd(["info", "rbd/a"]).contains("size 48 MiB"))
        } catch {
            Issue.record("\(error)")
        }
        await engine.shutdown()
    }

    @Test func anUnresponsiveOsdStallsOnlyTheRbdRequestsAndTheyResume() async throws {
        let cluster = try await CephCluster("outage")
        defer { cluster.stop() }
        try await cluster.rbd(["create", "--size", "8M", "rbd/a"])
        let engine = try Engine(queueCount: 2, cpus: nil)
        do {
            try await engine.controller.apply(json: JSONValue.parse("""
                [{"type":"blockdev-add","data":{"driver":"rbd","node-name":"remote","pool":"rbd","image":"a","conf":"\(cluster.conf)"}},
                 {"type":"blockdev-add","data":{"driver":"null-co","node-name":"local","size":"64M"}},
                 {"type":"backend-add","data":{"id":"remote0","node-name":"remote","writable":true}},
                 {"type":"backend-add","data":{"id":"local0","node-name":"local","writable":false}}]
                """))
            let queue = engine.queues[0]
            let port = BackendPort(backendName: "remote0", queue: queue)
            try await engine.controller.attach(port)
            let pid = try #require(cluster.osdPid)
            kill(pid, SIGSTOP)
            let buffer = AlignedBuffer(count: 65536)
            let finished = Locked(false)
            let stalled = Task(executorPreference: queue.executor) {
                let status = await port.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 65536, buffer: buffer.slice(from: 0, count: 65536)))
                finished.withLock { $0 = true }
                return status
            }
            // The OSD cannot answer: the read waits (librbd's own policy: it retries), while the
            // same queues keep serving another node.
            var spec = WorkloadSpec()
            spec.queueDepth = 8
            let local = try await LoadRun.run(controller: engine.controller, backend: "local0", spec: spec, length: .opsPerQueue(20_000))
            #expect(local.ops == 40_000)
            #expect(local.failed == 0)
            #expect(!finished.withLock { $0 }, "the read did not wait for the stopped OSD")
            kill(pid, SIGCONT)
            let status = await stalled.value
            #expect(status == .ok)
            await engine.controller.detach(port)
        } catch {
            if let pid = cluster.osdPid { kill(pid, SIGCONT) }
            Issue.record("\(error)")
        }
        await engine.shutdown()
    }

    /// The rbd node as a mirror target and a backup target, and behind an NBD export of the same daemon.
    @Test func aMirrorAndABackupCopyALocalImageIntoRbdOverQMP() async throws {
        let cluster = try await CephCluster("mirror")
        defer { cluster.stop() }
        let scratch = try ScratchDirectory("rbd-mirror")
        let source = scratch.path("source.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", source, "16M"])
        #expect(try await QemuTool.io("write -P 0x3c 1M 5M", source))
        try await cluster.rbd(["create", "--size", "16M", "rbd/target"])
        try await cluster.rbd(["create", "--size", "16M", "rbd/backup"])
        let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"file","node-name":"source","filename":"\#(source)"}"#,
            "--blockdev", #"{"driver":"rbd","node-name":"target","pool":"rbd","image":"target","conf":"\#(cluster.conf)"}"#,
            "--blockdev", #"{"driver":"rbd","node-name":"backup","pool":"rbd","image":"backup","conf":"\#(cluster.conf)"}"#,
            "--nbd-server", "addr.type=unix,addr.path=\(scratch.path("nbd.sock"))",
        ])
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        let start = try client.execute("blockdev-mirror", arguments: ["job-id": "m0", "device": "source", "target": "target", "sync": "full"])
        #expect(!start.isError, "\(String(describing: start.error))")
        #expect(try client.waitForEvent("BLOCK_JOB_READY", timeoutSeconds: 60) != nil, "no BLOCK_JOB_READY; \(process.log)")
        #expect(!(try client.execute("job-complete", arguments: ["id": "m0"]).isError))
        let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
        // A full backup into another image, judged through QEMU's rbd driver.
        let backup = try client.execute("blockdev-backup", arguments: ["job-id": "b0", "device": "source", "target": "backup", "sync": "full"])
        #expect(!backup.isError, "\(String(describing: backup.error))")
        let backedUp = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(backedUp["data"]?.objectValue?["error"] == nil, "\(backedUp)")
        try await QemuTool.require("qemu-img", ["compare", "-U", "-f", "raw", "-F", "rbd", source, cluster.filename("backup")])
        let export = try client.execute("block-export-add", arguments: ["type": "nbd", "id": "e0", "node-name": "target", "name": "rbd",
                                                                        "writable": true])
        #expect(!export.isError, "\(String(describing: export.error))")
        let uri = "nbd+unix:///rbd?socket=\(scratch.path("nbd.sock"))"
        #expect(try await QemuTool.io("read -P 0x3c 1M 5M", uri))
        #expect(try await QemuTool.io("write -P 0x4d 8M 1M", uri))
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)
        #expect(try await QemuTool.io("write -P 0x4d 8M 1M", source))
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "rbd", source, cluster.filename("target")])
    }
}
