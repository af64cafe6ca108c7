import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// blockdev-backup and dirty bitmaps while a verified two-queue load writes the source over NBD:
/// the backup holds the source as it was when the job started (the copy-before-write filter
/// copies every chunk before the guest changes it), the bitmap started with it counts every
/// write after (an incremental backup on top then equals the source), and a fleecing export
/// reads the snapshot while the guest writes.
@Suite(.serialized, .timeLimit(.minutes(3))) struct BackupTests {
    /// A source of 32 MiB of 0x11, exported as `disk`, and qcow2 targets of the same size.
    static func daemon(_ scratch: ScratchDirectory, targets: [String]) async throws -> (NBDServerProcess, QMPClient, nbdSocket: String, source: String) {
        let source = scratch.path("source.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", source, "32M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 32M", source])
        var nodes = ["--blockdev", #"{"driver":"qcow2","node-name":"source","file":{"driver":"file","filename":"\#(source)"}}"#]
        for target in targets {
            try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", scratch.path("\(target).qcow2"), "32M"])
            nodes += ["--blockdev", #"{"driver":"qcow2","node-name":"\#(target)","file":{"driver":"file","filename":"\#(scratch.path("\(target).qcow2"))"}}"#]
        }
        let nbdSocket = scratch.path("nbd.sock")
        let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: nodes + [
            "--nbd-server", "addr.type=unix,addr.path=\(nbdSocket)",
            "--export", "type=nbd,id=e0,node-name=source,name=disk,writable=on",
        ])
        return (process, try QMPClient(address: socket), nbdSocket, source)
    }

    static func expectOK(_ reply: QMPClient.Reply, _ what: String) {
        #expect(!reply.isError, "\(what): \(String(describing: reply.error))")
    }

    /// Waits until the job's filter is in the graph (the snapshot's instant has passed).
    static func waitForNode(_ client: QMPClient, _ name: String) throws {
        for _ in 0..<5000 {
            if case .array(let nodes)? = try client.execute("query-named-block-nodes").result,
               nodes.contains(where: { $0.objectValue?["node-name"] == .string(name) }) { return }
            usleep(1000)
        }
        Issue.record("node \(name) never appeared")
    }

    /// A full backup, started in one transaction with a bitmap, while the load writes: the target
    /// reads 0x11 everywhere (the snapshot), and once the load stopped, an incremental backup of
    /// the bitmap into an overlay of the full one makes a chain equal to the source.
    @Test func fullThenIncrementalUnderAVerifiedLoad() async throws {
        let scratch = try ScratchDirectory("backup-load")
        let (process, client, nbdSocket, source) = try await Self.daemon(scratch, targets: ["full"])
        defer { _ = process.stop() }
        // 8 MiB/s: the backup takes about four seconds, the load's three all run inside it.
        Self.expectOK(try client.execute("transaction", arguments: ["actions": [
            ["type": "block-dirty-bitmap-add", "data": ["node": "source", "name": "b0"]],
            ["type": "blockdev-backup", "data": ["job-id": "full", "device": "source", "target": "full", "sync": "full",
                                                 "filter-node-name": "cbw", "speed": .int(8 << 20)]],
        ]]), "transaction")
        try Self.waitForNode(client, "cbw")
        let load = QMPMonitorTests.verifiedLoad(socket: nbdSocket, seconds: 3)
        let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
        try await QMPMonitorTests.expectCleanLoad(load, log: process.log)

        let full = scratch.path("full.qcow2")
        let incremental = scratch.path("inc.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", full, "-F", "qcow2", incremental])
        Self.expectOK(try client.execute("blockdev-add", arguments: [
            "driver": "qcow2", "node-name": "inc", "backing": .null, "file": ["driver": "file", "filename": .string(incremental)],
        ]), "blockdev-add inc")
        Self.expectOK(try client.execute("blockdev-backup", arguments: ["job-id": "inc", "device": "source", "target": "inc",
                                                                         "sync": "incremental", "bitmap": "b0"]), "incremental")
        let incDone = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(incDone["data"]?.objectValue?["error"] == nil, "\(incDone)")
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)

        let snapshot = try await QemuTool.run("qemu-io", ["-f", "qcow2", "-r", "-c", "read -P 0x11 0 32M", full])
        #expect(snapshot.status == 0 && !snapshot.output.contains("fail"), "the full backup is the source as it was: \(snapshot.output)")
        let compare = try await QemuTool.run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", source, incremental])
        #expect(compare.status == 0, "full + incremental equals the source: \(compare.output)")
        for image in [source, full, incremental] {
            let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", image])
            #expect(check.status == 0, "\(image): \(check.output)")
        }
    }

    /// Fleecing: a sync=none backup into an overlay of the source and a snapshot-access export of
    /// its filter, copied out by qemu-img convert while the load writes: the copy is the source
    /// as it was when the backup started.
    @Test func fleecingExportReadsTheSnapshotWhileTheGuestWrites() async throws {
        let scratch = try ScratchDirectory("backup-fleece")
        let overlay = scratch.path("fleece.qcow2")
        let (process, client, nbdSocket, source) = try await Self.daemon(scratch, targets: [])
        defer { _ = process.stop() }
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", source, "-F", "qcow2", overlay])
        Self.expectOK(try client.execute("blockdev-add", arguments: [
            "driver": "qcow2", "node-name": "fleece", "backing": "source", "file": ["driver": "file", "filename": .string(overlay)],
        ]), "blockdev-add fleece")
        Self.expectOK(try client.execute("blockdev-backup", arguments: ["job-id": "fl", "device": "source", "target": "fleece", "sync": "none",
                                                                         "filter-node-name": "cbw"]), "fleecing backup")
        try Self.waitForNode(client, "cbw")
        let load = QMPMonitorTests.verifiedLoad(socket: nbdSocket, seconds: 4)
        Self.expectOK(try client.execute("blockdev-add", arguments: ["driver": "snapshot-access", "node-name": "snap", "file": "cbw"]), "snapshot-access")
        Self.expectOK(try client.execute("block-export-add", arguments: ["type": "nbd", "id": "e1", "node-name": "snap"]), "export")
        let copy = scratch.path("copy.raw")
        let convert = try await QemuTool.run("qemu-img", ["convert", "-f", "raw", "-O", "raw", "nbd+unix:///snap?socket=\(nbdSocket)", copy])
        #expect(convert.status == 0, "\(convert.output)")
        try await QMPMonitorTests.expectCleanLoad(load, log: process.log)
        let snapshot = try await QemuTool.run("qemu-io", ["-f", "raw", "-r", "-c", "read -P 0x11 0 32M", copy])
        #expect(snapshot.status == 0 && !snapshot.output.contains("fail"), "the fleeced copy is the source as it was: \(snapshot.output)")
        Self.expectOK(try client.execute("block-export-del", arguments: ["id": "e1"]), "export del")
        #expect(try client.waitForEvent("BLOCK_EXPORT_DELETED", timeoutSeconds: 20) != nil)
        Self.expectOK(try client.execute("blockdev-del", arguments: ["node-name": "snap"]), "blockdev-del snap")
        Self.expectOK(try client.execute("block-job-cancel", arguments: ["device": "fl"]), "cancel")
        #expect(try client.waitForEvent("BLOCK_JOB_CANCELLED", timeoutSeconds: 20) != nil, "\(process.log)")
        guard case .array(let nodes)? = try client.execute("query-named-block-nodes").result else { Issue.record("no nodes"); return }
        #expect(!nodes.contains { $0.objectValue?["node-name"] == .string("cbw") }, "the filter left with the job")
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)
    }
}
