import Foundation
import Glibc
import StrataControl
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime
import Testing
@testable import StrataISCSI

/// A one-LUN iSCSI target (scripts/tgt-mini: Debian tgt's tgtd in the foreground) for one test,
/// on a free port, its LUN backed by a file the test can read directly.
private final class IscsiTarget: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; start and stop run from the test's own task.
    let directory: String
    let backing: String
    let port: Int
    let thin: Bool
    /// CHAP credentials the target demands, if any.
    let chap: (user: String, password: String)?
    var url: String { "iscsi://127.0.0.1:\(port)/iqn.2026-12.io.strata:lun/1" }
    var blockdev: String {
        #"{"driver":"iscsi","node-name":"remote","portal":"127.0.0.1:\#(port)","target":"iqn.2026-12.io.strata:lun","lun":1}"#
    }

    init(_ name: String, sizeBytes: Int, thin: Bool = true, chap: (user: String, password: String)? = nil) async throws {
        directory = FileManager.default.temporaryDirectory.path + "/strata-tgt-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        backing = directory + "/lun.raw"
        precondition(FileManager.default.createFile(atPath: backing, contents: nil))
        precondition(truncate(backing, off_t(sizeBytes)) == 0)
        port = NBDSocket.freePort()
        self.thin = thin
        self.chap = chap
        try await start()
    }

    /// Starts tgtd and configures the LUN; again after `stop` for a target that comes back.
    func start() async throws {
        let (status, output) = await script("start '\(backing)'\(thin ? " thin" : "")")
        guard status == 0 else { throw NBDServerError("tgt-mini start failed (\(status)): \(output)") }
    }

    /// SIGKILL, as a crash: sessions drop without a logout.
    func stop() async { _ = await script("stop") }

    func remove() async {
        await stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs scripts/tgt-mini with system(3) on a Dispatch thread: tgtd outlives the script, and
    /// output goes to a file (a pipe held by the daemon would never end).
    private func script(_ arguments: String) async -> (Int32, String) {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let log = directory + "/script.log"
        let credentials = chap.map { "TGT_CHAP_USER='\($0.user)' TGT_CHAP_PASSWORD='\($0.password)' " } ?? ""
        let command = "\(credentials)TGT_DIR='\(directory)' TGT_PORT=\(port) bash '\(root.appendingPathComponent("scripts/tgt-mini").path)' \(arguments) > '\(log)' 2>&1 < /dev/null"
        let status: Int32 = await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: system(command)) }
        }
        return (status, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }
}

/// The iscsi protocol node against a real iSCSI target (tgtd), judged by QEMU's libiscsi driver,
/// libiscsi's own tools and the LUN's backing file.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct IscsiTests {
    @Test func urlsAndOptionsParseAsQemuReadsThem() throws {
        let plain = try IscsiLocation(url: "iscsi://host/iqn.2001-04.com.example:disk/3", nodeName: "n")
        #expect(plain.portal == "host:3260" && plain.target == "iqn.2001-04.com.example:disk" && plain.lun == 3 && plain.user == nil)
        let full = try IscsiLocation(url: "iscsi://user%pa%ss@[::1]:3261/iqn.x:y/0", nodeName: "n")
        #expect(full.user == "user" && full.password == "pa%ss" && full.portal == "[::1]:3261" && full.lun == 0)
        func refusal(_ url: String) -> String { refusalText { _ = try IscsiLocation(url: url, nodeName: "n") } }
        #expect(refusal("iscsi://host/target") == "n: Parameter 'filename' expects iscsi://host[:port]/target/lun, got 'iscsi://host/target'")
        #expect(refusal("iscsi://host/t/x") == "n: Parameter 'filename' expects a LUN from 0 to 16383, got 'x'")
        #expect(refusal("iscsi://host:99999/t/0") == "n: Parameter 'filename' expects host[:port], got 'host:99999'")
        #expect(refusal("iscsi://@host/t/0") == "n: Parameter 'filename' has an empty user name before '@'")
        func optionsRefusal(_ options: [String: JSONValue]) -> String {
            var reader = OptionReader(nodeName: "n", options: options)
            return refusalText { _ = try IscsiNodeConfiguration(parsing: &reader) }
        }
        #expect(optionsRefusal(["portal": "h", "target": "t", "password-secret": "s"]) == "n: Parameter 'password-secret' needs 'user' too (CHAP)")
        #expect(optionsRefusal(["portal": "h", "target": "t", "transport": "iser"]) == "n: Parameter 'transport' iser is not supported: use tcp")
        #expect(optionsRefusal(["portal": "h", "target": "t", "header-digest": "md5"]).contains("expects one of crc32c, none, crc32c-none, none-crc32c"))
        #expect(optionsRefusal(["portal": "h", "target": "t", "lun": 20000]).contains("'lun' must be between 0 and 16383"))
        #expect(optionsRefusal(["filename": "iscsi://h/t/0", "portal": "h"]) == "n: Parameter 'portal' cannot be combined with 'filename'")
        var reader = OptionReader(nodeName: "n", options: ["portal": "h:3270", "target": "t", "lun": 2, "header-digest": "crc32c", "timeout": 7])
        let configuration = try IscsiNodeConfiguration(parsing: &reader)
        #expect(configuration.location.portal == "h:3270" && configuration.location.lun == 2)
        #expect(configuration.location.headerDigest == .crc32c && configuration.location.timeoutSeconds == 7)
    }

    @Test func dataMovesBothWaysBetweenStrataAndQemusIscsiDriver() async throws {
        let target = try await IscsiTarget("data", sizeBytes: 16 << 20)
        let scratch = try ScratchDirectory("iscsi-data")
        do {
            // libiscsi's own tools see the LUN strata will use.
            let inquiry = try await QemuTool.run("iscsi-inq", [target.url])
            #expect(inquiry.output.contains("Peripheral Device Type:DIRECT_ACCESS"), "\(inquiry.output)")
            let capacity = try await QemuTool.run("iscsi-readcapacity16", [target.url])
            #expect(capacity.output.contains("Total size:16777216") && capacity.output.contains("LBPME:1"), "\(capacity.output)")
            #expect(try await QemuTool.run("iscsi-ls", ["iscsi://127.0.0.1:\(target.port)"]).output.contains("iqn.2026-12.io.strata:lun"))
            // strata img info reaches the LUN through the node; its disk size stays the server's.
            let info = try await QemuTool.strata(["img", "info", "--output=json", target.url])
            #expect(info.contains(#""virtual-size": 16777216"#) && info.contains(#""format": "raw""#) && !info.contains("actual-size"), "\(info)")
            #expect(try await QemuTool.strata(["img", "info", target.url]).contains("disk size: unavailable"))

            // Written by strata (whole blocks, partial blocks, zeros, a discard), judged by the
            // LUN's backing file and by QEMU's iscsi driver against the same commands on a file.
            let commands = ["write -P 0x5a 1M 2M", "write -z 2M 64k", "write -P 0x11 3000 5000", "write -P 0x22 5M 700",
                            "discard 1536k 512k", "write -z -u 8M 1M"]
            try await QemuTool.strata(["io"] + commands.flatMap { ["-c", $0] } + [target.url])
            let reference = scratch.path("reference.raw")
            try await QemuTool.require("qemu-img", ["create", "-f", "raw", reference, "16M"])
            for command in commands { #expect(try await QemuTool.io(command, reference)) }
            try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, target.backing])
            let converted = scratch.path("converted.raw")
            try await QemuTool.require("qemu-img", ["convert", "-f", "raw", "-O", "raw", target.url, converted])
            try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, converted])
            // Allocation from GET LBA STATUS, as QEMU's driver reports it.
            let ours = try await QemuTool.strata(["img", "map", "--output=json", "-f", "raw", target.url])
            let theirs = try await QemuTool.run("qemu-img", ["map", "--output=json", "-f", "raw", target.url])
            #expect(ours.trimmingCharacters(in: .whitespacesAndNewlines) == theirs.output.trimmingCharacters(in: .whitespacesAndNewlines))
            #expect(ours.contains(#""start": 1572864, "length": 524288, "depth": 0, "present": true, "zero": true, "data": false"#), "\(ours)")

            // The reverse: written by QEMU's driver, read by strata; and strata img convert into the LUN.
            let other = scratch.path("other.raw")
            try await QemuTool.require("qemu-img", ["create", "-f", "raw", other, "16M"])
            #expect(try await QemuTool.io("write -P 0x77 4M 3M", other))
            try await QemuTool.require("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", other, target.url])
            let back = scratch.path("back.raw")
            try await QemuTool.strata(["img", "convert", "-O", "raw", target.url, back])
            try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", other, back])
            try await QemuTool.strata(["img", "convert", "-n", "-f", "raw", "-O", "raw", reference, target.url])
            try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", reference, target.url])
        } catch {
            Issue.record("\(error)")
        }
        await target.remove()
    }

    @Test func twoQueuesOfVerifiedLoadEachOnASessionOfItsOwn() async throws {
        let target = try await IscsiTarget("load", sizeBytes: 32 << 20)
        do {
            let report = try await QemuTool.strata(["bench", "--json", "--blockdev", target.blockdev, "--queues", "2", "--depth", "16",
                                           "--rw", "randrw", "--verify", "--ops", "1500"])
            let json = try #require(try JSONSerialization.jsonObject(with: Data(report.utf8)) as? [String: Any])
            #expect(json["ops"] as? Int == 3000)
            #expect(json["failed"] as? Int == 0)
            #expect(json["verify_failures"] as? Int == 0)
            // One session per queue beside the control session that opened the node.
            let engine = try Engine(queueCount: 2, cpus: nil)
            do {
                try await engine.controller.apply(json: JSONValue.parse("""
                    [{"type":"blockdev-add","data":\(target.blockdev)},
                     {"type":"backend-add","data":{"id":"remote0","node-name":"remote","writable":true}}]
                    """))
                var spec = WorkloadSpec()
                spec.queueDepth = 8
                spec.mode = .randrw
                spec.verify = true
                let run = try await LoadRun.run(controller: engine.controller, backend: "remote0", spec: spec, length: .opsPerQueue(500))
                #expect(run.ops == 1000 && run.failed == 0 && run.verifyFailures == 0)
                let state = try #require(try await engine.controller.state(of: "remote") as? IscsiNodeState)
                #expect(state.sessionCount == 3)
            } catch {
                Issue.record("\(error)")
            }
            await engine.shutdown()
        } catch {
            Issue.record("\(error)")
        }
        await target.remove()
    }

    /// The target crashes (SIGKILL) and comes back: libiscsi reconnects and resends; a write
    /// acknowledged before the crash and one issued during it are both there afterwards, and the
    /// queues serve another node meanwhile.
    @Test func aTargetThatCrashesAndReturnsLosesNoWriteAndStallsNoOtherNode() async throws {
        let target = try await IscsiTarget("crash", sizeBytes: 8 << 20)
        let engine = try Engine(queueCount: 2, cpus: nil)
        do {
            try await engine.controller.apply(json: JSONValue.parse("""
                [{"type":"blockdev-add","data":\(target.blockdev)},
                 {"type":"blockdev-add","data":{"driver":"null-co","node-name":"local","size":"64M"}},
                 {"type":"backend-add","data":{"id":"remote0","node-name":"remote","writable":true}},
                 {"type":"backend-add","data":{"id":"local0","node-name":"local","writable":false}}]
                """))
            let queue = engine.queues[0]
            let port = BackendPort(backendName: "remote0", queue: queue)
            try await engine.controller.attach(port)
            let before = AlignedBuffer(count: 65536)
            before.fill(0xa1)
            let during = AlignedBuffer(count: 65536)
            during.fill(0xb2)
            let acknowledged = await Task(executorPreference: queue.executor) {
                await port.submit(BlockRequest(operation: .write, offsetBytes: 0, lengthBytes: 65536, buffer: before.slice(from: 0, count: 65536)))
            }.value
            #expect(acknowledged == .ok)
            await target.stop()
            let finished = Locked(false)
            let stalled = Task(executorPreference: queue.executor) {
                let status = await port.submit(BlockRequest(operation: .write, offsetBytes: 1 << 20, lengthBytes: 65536,
                                                            buffer: during.slice(from: 0, count: 65536), flags: .fua))
                finished.withLock { $0 = true }
                return status
            }
            var spec = WorkloadSpec()
            spec.queueDepth = 8
            let local = try await LoadRun.run(controller: engine.controller, backend: "local0", spec: spec, length: .opsPerQueue(20_000))
            #expect(local.ops == 40_000 && local.failed == 0)
            #expect(!finished.withLock { $0 }, "the write completed with the target down")
            try await target.start()
            #expect(await stalled.value == .ok)
            await engine.controller.detach(port)
            // Both writes are in the LUN's file.
            let file = try #require(FileHandle(forReadingAtPath: target.backing))
            let head = try file.read(upToCount: 65536) ?? Data()
            try file.seek(toOffset: 1 << 20)
            let middle = try file.read(upToCount: 65536) ?? Data()
            try file.close()
            #expect(head.count == 65536 && head.allSatisfy { $0 == 0xa1 })
            #expect(middle.count == 65536 && middle.allSatisfy { $0 == 0xb2 })
        } catch {
            Issue.record("\(error)")
        }
        await engine.shutdown()
        await target.remove()
    }

    /// A target that demands CHAP: the password comes from a secret object (`--object secret`, and
    /// `object-add` over QMP), as QEMU's `password-secret`; a wrong one fails the open by name.
    @Test func chapLoginTakesItsPasswordFromASecretObject() async throws {
        let target = try await IscsiTarget("chap", sizeBytes: 8 << 20, chap: ("strata", "chap-secret-123"))
        let scratch = try ScratchDirectory("iscsi-chap")
        do {
            let node = #"{"driver":"iscsi","node-name":"remote","portal":"127.0.0.1:\#(target.port)","target":"iqn.2026-12.io.strata:lun","lun":1,"user":"strata","password-secret":"pw"}"#
            let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: ["--object", "secret,id=pw,data=chap-secret-123", "--blockdev", node,
                                                                                "--nbd-server", "addr.type=unix,addr.path=\(scratch.path("nbd.sock"))"])
            defer { _ = process.stop() }
            let client = try QMPClient(address: socket)
            let export = try client.execute("block-export-add", arguments: ["type": "nbd", "id": "e0", "node-name": "remote", "name": "lun", "writable": true])
            #expect(!export.isError, "\(String(describing: export.error)); \(process.log)")
            #expect(try await QemuTool.io("write -P 0x6b 0 64k", "nbd+unix:///lun?socket=\(scratch.path("nbd.sock"))"))
            // A secret added over QMP, with the wrong password (base64 of "wrong-password1").
            #expect(!(try client.execute("object-add", arguments: ["qom-type": "secret", "id": "bad", "data": "d3JvbmctcGFzc3dvcmQx", "format": "base64"]).isError))
            let refused = try client.execute("blockdev-add", arguments: ["driver": "iscsi", "node-name": "other", "portal": .string("127.0.0.1:\(target.port)"),
                                                                         "target": "iqn.2026-12.io.strata:lun", "lun": 1, "user": "strata", "password-secret": "bad"])
            #expect(refused.error?.desc.contains("iSCSI login to iqn.2026-12.io.strata:lun LUN 1") == true, "\(String(describing: refused.error))")
            let missing = try client.execute("blockdev-add", arguments: ["driver": "iscsi", "node-name": "third", "portal": .string("127.0.0.1:\(target.port)"),
                                                                         "target": "iqn.2026-12.io.strata:lun", "lun": 1, "user": "strata", "password-secret": "nope"])
            #expect(missing.error?.desc == "No secret with id 'nope'", "\(String(describing: missing.error))")
            _ = try client.execute("quit")
            #expect(process.stop(timeout: 20).inTime)
            // Without the password, libiscsi's own tool is refused; the data is in the LUN's file.
            #expect(try await QemuTool.run("iscsi-inq", [target.url]).status != 0)
            #expect(try await QemuTool.io("read -P 0x6b 0 64k", target.backing))
        } catch {
            Issue.record("\(error)")
        }
        await target.remove()
    }

    /// The iscsi node as a backup target over QMP, then behind an NBD export of the same daemon.
    @Test func aBackupCopiesALocalImageIntoTheLunOverQMP() async throws {
        let target = try await IscsiTarget("backup", sizeBytes: 16 << 20)
        let scratch = try ScratchDirectory("iscsi-backup")
        do {
            let source = scratch.path("source.raw")
            try await QemuTool.require("qemu-img", ["create", "-f", "raw", source, "16M"])
            #expect(try await QemuTool.io("write -P 0x3c 1M 5M", source))
            let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: [
                "--blockdev", #"{"driver":"file","node-name":"source","filename":"\#(source)"}"#,
                "--blockdev", target.blockdev,
                "--nbd-server", "addr.type=unix,addr.path=\(scratch.path("nbd.sock"))",
            ])
            defer { _ = process.stop() }
            let client = try QMPClient(address: socket)
            let start = try client.execute("blockdev-backup", arguments: ["job-id": "b0", "device": "source", "target": "remote", "sync": "full"])
            #expect(!start.isError, "\(String(describing: start.error))")
            let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
            #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
            try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, target.backing])
            let export = try client.execute("block-export-add", arguments: ["type": "nbd", "id": "e0", "node-name": "remote", "name": "lun",
                                                                            "writable": true])
            #expect(!export.isError, "\(String(describing: export.error))")
            let uri = "nbd+unix:///lun?socket=\(scratch.path("nbd.sock"))"
            #expect(try await QemuTool.io("read -P 0x3c 1M 5M", uri))
            #expect(try await QemuTool.io("write -P 0x4d 8M 1M", uri))
            _ = try client.execute("quit")
            #expect(process.stop(timeout: 20).inTime)
            #expect(try await QemuTool.io("write -P 0x4d 8M 1M", source))
            try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, target.url])
        } catch {
            Issue.record("\(error)")
        }
        await target.remove()
    }
}
