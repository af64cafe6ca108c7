import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// `strata serve`'s QMP monitor on its own: hostile and careless clients, Strata's graph edits
/// over QMP under a verified load, and the `strata qmp` command line.
@Suite(.serialized, .timeLimit(.minutes(3))) struct QMPMonitorTests {
    static func daemon(_ scratch: ScratchDirectory, extra: [String] = []) throws -> (NBDServerProcess, String) {
        let socket = scratch.path("qmp.sock")
        let process = try QMPDifferentialTests.startDaemon("strata", socket: socket, scratch: scratch, extra: extra)
        return (process, socket)
    }

    /// Reads one CRLF- or LF-terminated message from a raw monitor socket.
    static func readMessage(_ fd: Int32) -> [String: Any]? {
        var line: [UInt8] = []
        while true {
            guard let byte = NBDSocket.receiveExactly(fd, 1) else { return nil }
            if byte[0] == UInt8(ascii: "\n") {
                if line.allSatisfy({ $0 == UInt8(ascii: "\r") }) { line = []; continue }
                return try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
            }
            line.append(byte[0])
        }
    }

    static func send(_ fd: Int32, _ text: String) -> Bool { NBDSocket.sendAll(fd, Array((text + "\n").utf8)) }

    /// A verified two-queue 4 KiB random read/write load on export `disk` at `socket`, through
    /// Strata's nbd node, running in the background.
    static func verifiedLoad(socket: String, seconds: Int = 5) -> Task<QemuTool.Result, any Error> {
        let node = #"{"driver":"nbd","node-name":"remote","server":{"type":"unix","path":"\#(socket)"},"export":"disk"}"#
        return Task {
            try await QemuTool.run(CommandLineTests.binary, ["bench", "--blockdev", node, "--queues", "2", "--depth", "16", "--rw", "randrw",
                                                             "--bs", "4k", "--verify", "--seconds", "\(seconds)", "--json"])
        }
    }

    /// Returns once `node` has served `operations` reads and writes: the load is connected and
    /// running, so what the test does next happens under it (and the load saw the node as it was).
    static func awaitLoad(on node: String, _ client: QMPClient, operations: Int64 = 256, timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if case .array(let entries)? = try client.execute("query-blockstats", arguments: ["query-nodes": true]).result,
               let stats = entries.compactMap(\.objectValue).first(where: { $0["node-name"] == .string(node) })?["stats"]?.objectValue,
               case .int(let reads)? = stats["rd_operations"], case .int(let writes)? = stats["wr_operations"],
               reads + writes >= operations {
                return
            }
            usleep(5000)
        }
        Issue.record("no load reached \(node) within \(timeout) s")
    }

    /// The load ended well: no failed, lost or misread request, and it did run.
    static func expectCleanLoad(_ load: Task<QemuTool.Result, any Error>, log: @autoclosure () -> String) async throws {
        let result = try await load.value
        try #require(result.status == 0, "\(result.output)\n\(log())")
        let (report, json) = try benchReport(result.output)
        #expect(report["failed"] as? Int == 0 && report["lost"] as? Int == 0 && report["verify_failures"] as? Int == 0, "\(json)")
        #expect((report["ops"] as? Int ?? 0) > 1000, "\(json)")
    }

    /// base (0x11 everywhere) <- mid (0x22 over 8-24 MiB) <- top, named nodes on a daemon that
    /// exports top as `disk` over NBD: the chain the stream and commit tests work on under load.
    static func exportedChain(_ name: String) async throws -> (ScratchDirectory, NBDServerProcess, socket: String, nbdSocket: String,
                                                                base: String, top: String) {
        let scratch = try ScratchDirectory(name)
        let base = scratch.path("base.qcow2")
        let mid = scratch.path("mid.qcow2")
        let top = scratch.path("top.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", base, "32M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 32M", base])
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x22 8M 16M", mid])
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top])
        let nbdSocket = scratch.path("nbd.sock")
        var nodes: [String] = []
        for (name, path, backing) in [("base", base, "null"), ("mid", mid, "\"base\""), ("top", top, "\"mid\"")] {
            nodes += ["--blockdev", #"{"driver":"file","node-name":"\#(name)-file","filename":"\#(path)"}"#,
                      "--blockdev", #"{"driver":"qcow2","node-name":"\#(name)","file":"\#(name)-file","backing":\#(backing)}"#]
        }
        let (process, socket) = try daemon(scratch, extra: nodes + [
            "--nbd-server", "addr.type=unix,addr.path=\(nbdSocket)",
            "--export", "type=nbd,id=e0,node-name=top,name=disk,writable=on",
        ])
        return (scratch, process, socket, nbdSocket, base, top)
    }

    @Test func badInputGetsGenericErrorAndTheMonitorLivesOn() throws {
        let scratch = try ScratchDirectory("qmp-bad")
        let (process, socket) = try Self.daemon(scratch)
        defer { _ = process.stop() }
        let fd = try #require(NBDSocket.connectUnix(socket))
        defer { close(fd) }
        #expect(Self.readMessage(fd)?["QMP"] != nil)
        #expect(Self.send(fd, #"{"execute": "qmp_capabilities"}"#))
        #expect(Self.readMessage(fd)?["return"] != nil)
        for bad in [#"{"execute": }"#, "}", #"{"execute": 5}"#, #"{"execute": "query-version", "arguments": [1]}"#, "\"text\""] {
            #expect(Self.send(fd, bad))
            let reply = try #require(Self.readMessage(fd), "no reply to \(bad)")
            let error = reply["error"] as? [String: Any]
            #expect(error?["class"] as? String == "GenericError", "\(bad) -> \(reply)")
        }
        // Several messages in one write, and one message split over many.
        #expect(Self.send(fd, #"{"execute":"query-version","id":1}{"execute":"query-version","id":2}"#))
        #expect(Self.readMessage(fd)?["id"] as? Int == 1)
        #expect(Self.readMessage(fd)?["id"] as? Int == 2)
        for piece in [#"{"exec"#, #"ute": "query-"#, #"version", "id": "split"}"#] { #expect(NBDSocket.sendAll(fd, Array(piece.utf8))) }
        #expect(Self.readMessage(fd)?["id"] as? String == "split")
    }

    @Test func anOversizedMessageIsRefusedAndTheConnectionClosed() throws {
        let scratch = try ScratchDirectory("qmp-big")
        let (process, socket) = try Self.daemon(scratch)
        defer { _ = process.stop() }
        let fd = try #require(NBDSocket.connectUnix(socket))
        defer { close(fd) }
        _ = Self.readMessage(fd)
        #expect(Self.send(fd, #"{"execute": "qmp_capabilities"}"#))
        _ = Self.readMessage(fd)
        let huge = #"{"execute": "query-version", "arguments": {"x": ""# + String(repeating: "a", count: 2 << 20) + "\"}}"
        _ = NBDSocket.sendAll(fd, Array(huge.utf8))
        let reply = Self.readMessage(fd)
        #expect((reply?["error"] as? [String: Any])?["class"] as? String == "GenericError", "\(String(describing: reply))")
        #expect(NBDSocket.closedByPeer(fd, timeout: 10))
        // The daemon serves the next client.
        let client = try QMPClient(address: socket)
        #expect(try client.execute("query-version").result != nil)
    }

    @Test func aThousandDroppedConnectionsLeaveDescriptorsAtBaseline() throws {
        let scratch = try ScratchDirectory("qmp-many")
        let (process, socket) = try Self.daemon(scratch)
        defer { _ = process.stop() }
        let probe = try QMPClient(address: socket)
        _ = try probe.execute("query-version")
        let baseline = process.openFDCount
        for index in 0..<1000 {
            guard let fd = NBDSocket.connectUnix(socket) else { Issue.record("connection \(index) refused"); return }
            if index % 2 == 0 { _ = Self.readMessage(fd) }
            if index % 3 == 0 { _ = Self.send(fd, #"{"execute": "qmp_capabilities"}"#) }
            close(fd)
        }
        #expect(try probe.execute("query-version").result != nil)
        // Closing is asynchronous in the daemon: wait for the count to come back.
        var count = process.openFDCount
        for _ in 0..<500 where count > baseline {
            usleep(10_000)
            count = process.openFDCount
        }
        #expect(count == baseline, "descriptors: \(baseline) before, \(count) after 1000 connections")
    }

    @Test func aClientThatNeverReadsBlocksNoOtherClient() async throws {
        let scratch = try ScratchDirectory("qmp-slow")
        let (process, socket) = try Self.daemon(scratch)
        defer { _ = process.stop() }
        let greedy = try #require(NBDSocket.connectUnix(socket))
        defer { close(greedy) }
        _ = Self.send(greedy, #"{"execute": "qmp_capabilities"}"#)
        // Thousands of commands whose replies are never read: the daemon's sends to this client
        // stall once the socket buffer is full.
        let flood = String(repeating: #"{"execute": "query-commands"}"#, count: 5000)
        let writer = Thread { _ = NBDSocket.sendAll(greedy, Array(flood.utf8)) }
        writer.start()
        let other = try QMPClient(address: socket)
        for _ in 0..<20 { #expect(try other.execute("query-version").result != nil) }
        #expect(try other.execute("blockdev-add", arguments: ["driver": "null-co", "node-name": "n0"]).result != nil)
    }

    /// The acceptance load: a two-queue NBD export read and written with verification while 20
    /// filters are inserted and removed, a throttle group's limits change, the file grows and a
    /// second export comes and goes, all over QMP. Nothing may fail, get lost or read wrong.
    @Test func liveEditsUnderAVerifiedLoad() async throws {
        let scratch = try ScratchDirectory("qmp-load")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "64M"])
        let nbdSocket = scratch.path("nbd.sock")
        let (process, socket) = try Self.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"file","node-name":"proto","filename":"\#(image)"}"#,
            "--blockdev", "driver=raw,node-name=fmt,file=proto",
            "--object", "throttle-group,id=tg0,limits.iops-total=0",
            "--nbd-server", "addr.type=unix,addr.path=\(nbdSocket)",
            "--export", "type=nbd,id=e0,node-name=fmt,name=disk,writable=on",
        ])
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        let bench = Self.verifiedLoad(socket: nbdSocket, seconds: 6)
        func ok(_ command: String, _ arguments: [String: JSONValue] = [:]) throws {
            let reply: QMPClient.Reply
            do { reply = try client.execute(command, arguments: arguments) } catch {
                Issue.record("\(command): \(error); daemon log: \(process.log)")
                throw error
            }
            #expect(!reply.isError, "\(command) \(arguments): \(String(describing: reply.error))")
        }
        for round in 0..<20 {
            try ok("x-insert-filter", ["above": "fmt", "filter": ["driver": "throttle", "node-name": .string("t\(round)"), "throttle-group": "tg0"]])
            if round == 5 { try ok("blockdev-reopen", ["options": [["driver": "throttle", "node-name": "t5", "throttle-group": "tg0", "file": "fmt",
                                                                     "limits": ["iops-total": 20000]]]]) }
            if round == 8 { try ok("block_resize", ["node-name": "proto", "size": .int(96 << 20)]) }
            if round == 10 { try ok("block-export-add", ["type": "nbd", "id": "e1", "node-name": "fmt", "name": "second"]) }
            if round == 14 { try ok("block-export-del", ["id": "e1"]) }
            try ok("x-remove-filter", ["node-name": .string("t\(round)")])
        }
        #expect(try client.waitForEvent("BLOCK_EXPORT_DELETED", timeoutSeconds: 20) != nil)
        try await Self.expectCleanLoad(bench, log: process.log)
        var status = stat()
        #expect(stat(image, &status) == 0 && status.st_size == 96 << 20)
    }

    /// block_resize of a qcow2 node while a verified two-queue load runs on it: growing far enough
    /// that the L1 table moves, writing the new range, and shrinking back. Nothing fails or reads
    /// wrong, and the image is clean and of the final size afterwards (qemu-img check and info).
    @Test func qcow2ResizesLiveUnderAVerifiedLoad() async throws {
        let scratch = try ScratchDirectory("qmp-qcow2-resize")
        let image = scratch.path("disk.qcow2")
        // 4 KiB clusters: one L1 entry covers 2 MiB, so 4 GiB needs a table of 4 clusters.
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", image, "64M"])
        let nbdSocket = scratch.path("nbd.sock")
        let (process, socket) = try Self.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"file","node-name":"proto","filename":"\#(image)"}"#,
            "--blockdev", "driver=qcow2,node-name=fmt,file=proto",
            "--nbd-server", "addr.type=unix,addr.path=\(nbdSocket)",
            "--export", "type=nbd,id=e0,node-name=fmt,name=disk,writable=on",
        ])
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        let bench = Self.verifiedLoad(socket: nbdSocket)
        // Connected before the first resize: a load that met the grown node would see 4 GiB.
        try Self.awaitLoad(on: "fmt", client)
        func ok(_ command: String, _ arguments: [String: JSONValue]) throws {
            let reply = try client.execute(command, arguments: arguments)
            #expect(!reply.isError, "\(command) \(arguments): \(String(describing: reply.error)) \(process.log)")
        }
        let uri = "nbd+unix:///disk?socket=\(nbdSocket)"
        try ok("block_resize", ["node-name": "fmt", "size": .int(4 << 30)])
        let grown = try await QemuTool.run("qemu-io", ["-f", "raw", "-c", "write -P 0x77 3G 64k", "-c", "read -P 0x77 3G 64k", uri])
        #expect(grown.status == 0 && !grown.output.contains("fail"), "\(grown.output)")
        try ok("block_resize", ["node-name": "fmt", "size": .int(64 << 20)])
        let shrunk = try await QemuTool.run("nbdinfo", ["--size", uri])
        #expect(shrunk.output.trimmingCharacters(in: .whitespacesAndNewlines) == "\(64 << 20)", "\(shrunk.output)")
        let odd = try client.execute("block_resize", arguments: ["node-name": "fmt", "size": .int((64 << 20) + 100)])
        #expect(odd.error?.desc.contains("multiple of 512") == true)
        try await Self.expectCleanLoad(bench, log: process.log)
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)
        let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", image])
        #expect(check.status == 0 && check.output.contains("No errors were found"), "\(check.output)")
        let info = try await QemuTool.run("qemu-img", ["info", "--output=json", image])
        #expect(info.output.contains(#""virtual-size": \#(64 << 20)"#), "\(info.output)")
    }

    /// block-stream while a verified two-queue load writes to the streamed node over NBD: the
    /// copy-on-read filter keeps the job's copies and the guest's writes apart, so nothing the
    /// guest wrote is overwritten by older chain data; afterwards the image names the base as its
    /// backing file and is clean.
    @Test func blockStreamUnderAVerifiedLoad() async throws {
        let (scratch, process, socket, nbdSocket, base, top) = try await Self.exportedChain("qmp-stream-load")
        defer {
            _ = process.stop()
            withExtendedLifetime(scratch) {}
        }
        let client = try QMPClient(address: socket)
        let bench = Self.verifiedLoad(socket: nbdSocket)
        // 32 MiB at 16 MiB/s: the stream runs for about two seconds of the load.
        let start = try client.execute("block-stream", arguments: ["job-id": "s0", "device": "top", "base-node": "base", "speed": .int(16 << 20)])
        #expect(!start.isError, "\(String(describing: start.error)) \(process.log)")
        // The op blockers: while the stream uses top and mid, nothing else may change them.
        let resize = try client.execute("block_resize", arguments: ["node-name": "top", "size": .int(64 << 20)])
        #expect(resize.error?.desc == "Node 'top' is busy: block device is in use by block job: stream (job 's0', stream top)", "\(String(describing: resize.error))")
        let reopen = try client.execute("blockdev-reopen", arguments: ["options": [["driver": "qcow2", "node-name": "mid", "file": "mid-file", "backing": "base"]]])
        #expect(reopen.error?.desc.contains("Node 'mid' is busy") == true, "\(String(describing: reopen.error))")
        let second = try client.execute("block-stream", arguments: ["job-id": "s1", "device": "top"])
        #expect(second.error?.desc.contains("job 's0'") == true, "\(String(describing: second.error))")
        let filter = try client.execute("x-insert-filter", arguments: ["above": "top", "filter": ["driver": "copy-on-read", "node-name": "cor9"]])
        #expect(filter.error?.desc.contains("Node 'top' is busy") == true, "\(String(describing: filter.error))")
        let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
        try await Self.expectCleanLoad(bench, log: process.log)
        // Once the job has concluded its nodes are free again.
        #expect(!(try client.execute("blockdev-del", arguments: ["node-name": "mid"]).isError), "mid left the chain at the pivot")
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)
        let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", top])
        #expect(check.status == 0 && check.output.contains("No errors were found"), "\(check.output)")
        let info = try await QemuTool.run("qemu-img", ["info", "--output=json", top])
        #expect(info.output.contains(#""backing-filename": "\#(base)""#), "\(info.output)")
    }

    /// block-commit under a verified two-queue load on the exported top: of the middle layer into
    /// the base (the guest keeps writing the top above it), and of the active layer itself (READY,
    /// then job-complete moves the export to the base in the middle of the load, which from then
    /// on reads the base: a write the commit missed would read back wrong).
    @Test(arguments: [false, true])
    func blockCommitUnderAVerifiedLoad(active: Bool) async throws {
        let (scratch, process, socket, nbdSocket, base, top) = try await Self.exportedChain("qmp-commit-load")
        defer {
            _ = process.stop()
            withExtendedLifetime(scratch) {}
        }
        let client = try QMPClient(address: socket)
        let bench = Self.verifiedLoad(socket: nbdSocket)
        var arguments: [String: JSONValue] = ["job-id": "c0", "device": "top", "base-node": "base", "speed": .int(16 << 20)]
        if !active { arguments["top-node"] = "mid" }
        let start = try client.execute("block-commit", arguments: arguments)
        #expect(!start.isError, "\(String(describing: start.error)) \(process.log)")
        if active {
            #expect(try client.waitForEvent("BLOCK_JOB_READY", timeoutSeconds: 60) != nil, "no BLOCK_JOB_READY; \(process.log)")
            #expect(!(try client.execute("job-complete", arguments: ["id": "c0"]).isError))
        }
        let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
        if active {
            guard case .array(let exports)? = try client.execute("query-block-exports").result else { Issue.record("no exports"); return }
            #expect(exports.first?.objectValue?["node-name"] == .string("base"), "the export moved to the base: \(exports)")
        }
        try await Self.expectCleanLoad(bench, log: process.log)
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)
        for image in [base, top] {
            let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", image])
            #expect(check.status == 0, "\(image): \(check.output)")
        }
        if !active {
            let info = try await QemuTool.run("qemu-img", ["info", "--output=json", top])
            #expect(info.output.contains(#""backing-filename": "\#(base)""#), "the top names the base: \(info.output)")
        }
    }

    /// blockdev-mirror of an exported node while a verified two-queue load writes it: READY, then
    /// job-complete moves the export to the target in the middle of the load. The load reads,
    /// from then on, the target: a write the mirror missed would read back wrong.
    @Test(arguments: ["background", "write-blocking"])
    func mirrorPivotsUnderAVerifiedLoad(copyMode: String) async throws {
        let scratch = try ScratchDirectory("qmp-mirror-load")
        let source = scratch.path("source.qcow2")
        let target = scratch.path("target.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", source, "32M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 32M", source])
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", target, "32M"])
        let nbdSocket = scratch.path("nbd.sock")
        let (process, socket) = try Self.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"file","node-name":"source-file","filename":"\#(source)"}"#,
            "--blockdev", #"{"driver":"qcow2","node-name":"source","file":"source-file"}"#,
            "--blockdev", #"{"driver":"file","node-name":"target-file","filename":"\#(target)"}"#,
            "--blockdev", #"{"driver":"qcow2","node-name":"target","file":"target-file"}"#,
            "--nbd-server", "addr.type=unix,addr.path=\(nbdSocket)",
            "--export", "type=nbd,id=e0,node-name=source,name=disk,writable=on",
        ])
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        let bench = Self.verifiedLoad(socket: nbdSocket)
        let start = try client.execute("blockdev-mirror", arguments: ["job-id": "m0", "device": "source", "target": "target", "sync": "full",
                                                                      "copy-mode": .string(copyMode)])
        #expect(!start.isError, "\(String(describing: start.error))")
        #expect(try client.waitForEvent("BLOCK_JOB_READY", timeoutSeconds: 60) != nil, "no BLOCK_JOB_READY; \(process.log)")
        #expect(!(try client.execute("job-complete", arguments: ["id": "m0"]).isError))
        let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 60), "no BLOCK_JOB_COMPLETED; \(process.log)")
        #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
        guard case .array(let exports)? = try client.execute("query-block-exports").result else { Issue.record("no exports"); return }
        #expect(exports.first?.objectValue?["node-name"] == .string("target"), "the export moved to the target: \(exports)")
        try await Self.expectCleanLoad(bench, log: process.log)
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)
        let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", target])
        #expect(check.status == 0, "\(check.output)")
    }

    /// quit while a job runs: the job is cancelled and concludes first (QEMU's job_cancel_sync_all),
    /// the daemon exits 0, and the chain is as it was, clean.
    @Test func quitCancelsARunningJob() async throws {
        let scratch = try ScratchDirectory("qmp-quit-job")
        let base = scratch.path("base.qcow2")
        let top = scratch.path("top.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", base, "32M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 32M", base])
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
        let (process, socket) = try Self.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"file","node-name":"base-file","filename":"\#(base)"}"#,
            "--blockdev", #"{"driver":"qcow2","node-name":"base","file":"base-file","backing":null}"#,
            "--blockdev", #"{"driver":"file","node-name":"top-file","filename":"\#(top)"}"#,
            "--blockdev", #"{"driver":"qcow2","node-name":"top","file":"top-file","backing":"base"}"#,
        ])
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        // 1 MiB/s: half a minute of work, far longer than the test waits.
        let start = try client.execute("block-stream", arguments: ["job-id": "s0", "device": "top", "speed": .int(1 << 20)])
        #expect(!start.isError, "\(String(describing: start.error))")
        guard case .array(let jobs)? = try client.execute("query-jobs").result else { Issue.record("no jobs"); return }
        #expect(jobs.count == 1)
        _ = try client.execute("quit")
        let stopped = process.stop(timeout: 20)
        #expect(stopped.inTime && stopped.status == 0, "\(stopped) \(process.log)")
        let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", top])
        #expect(check.status == 0 && check.output.contains("No errors were found"), "\(check.output)")
        let info = try await QemuTool.run("qemu-img", ["info", "--output=json", top])
        #expect(info.output.contains(#""backing-filename": "\#(base)""#), "a cancelled stream leaves the chain: \(info.output)")
    }

    /// Introspection covers exactly the commands the monitor has (a command added without
    /// running scripts/generate-qmp-schema fails here), and every type it names is defined.
    @Test func theSchemaDescribesEveryCommand() throws {
        let scratch = try ScratchDirectory("qmp-schema")
        let (process, socket) = try Self.daemon(scratch)
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        guard case .array(let commands)? = try client.execute("query-commands").result,
              case .array(let entries)? = try client.execute("query-qmp-schema").result else {
            Issue.record("query-commands or query-qmp-schema gave no array")
            return
        }
        let listed = Set(commands.compactMap { $0.objectValue?["name"] }.compactMap { if case .string(let name) = $0 { name } else { nil } })
        var described: Set<String> = []
        var defined: Set<String> = []
        var referenced: Set<String> = []
        for entry in entries {
            guard let fields = entry.objectValue, case .string(let name)? = fields["name"], case .string(let meta)? = fields["meta-type"] else {
                Issue.record("schema entry without name or meta-type: \(entry)")
                continue
            }
            defined.insert(name)
            if meta == "command" { described.insert(name) }
            for key in ["arg-type", "ret-type", "element-type"] { if case .string(let type)? = fields[key] { referenced.insert(type) } }
            if case .array(let members)? = fields["members"] {
                for case .object(let member) in members { if case .string(let type)? = member["type"] { referenced.insert(type) } }
            }
            if case .array(let variants)? = fields["variants"] {
                for case .object(let variant) in variants { if case .string(let type)? = variant["type"] { referenced.insert(type) } }
            }
        }
        #expect(listed.count > 20)
        #expect(listed == described, "in query-commands only: \(listed.subtracting(described)); in the schema only: \(described.subtracting(listed))")
        #expect(referenced.isSubset(of: defined), "types named but not defined: \(referenced.subtracting(defined))")
        #expect(defined.contains("BLOCK_EXPORT_DELETED"))
    }

    @Test func strataQmpSendsCommandsFromTheCommandLine() async throws {
        let scratch = try ScratchDirectory("qmp-cli")
        let (process, socket) = try Self.daemon(scratch)
        defer { _ = process.stop() }
        let version = try await QemuTool.run(CommandLineTests.binary, ["qmp", socket, "query-version"])
        #expect(version.status == 0 && version.output.contains(#""qemu": {"#), "\(version.output)")
        let add = try await QemuTool.run(CommandLineTests.binary, ["qmp", socket, "blockdev-add", "driver=null-co", "node-name=n0", "size=1048576"])
        #expect(add.status == 0, "\(add.output)")
        let nodes = try await QemuTool.run(CommandLineTests.binary, ["qmp", socket, "query-named-block-nodes"])
        #expect(nodes.status == 0 && nodes.output.contains(#""node-name": "n0""#), "\(nodes.output)")
        let duplicate = try await QemuTool.run(CommandLineTests.binary, ["qmp", socket, "blockdev-add", #"{"driver":"null-co","node-name":"n0"}"#])
        #expect(duplicate.status == 1 && duplicate.output.contains("GenericError"), "\(duplicate.output)")
        let unknown = try await QemuTool.run(CommandLineTests.binary, ["qmp", socket, "no-such-command"])
        #expect(unknown.status == 1 && unknown.output.contains("CommandNotFound"), "\(unknown.output)")
        let quit = try await QemuTool.run(CommandLineTests.binary, ["qmp", socket, "quit"])
        #expect(quit.status == 0, "\(quit.output)")
        let stopped = process.stop(timeout: 20)
        #expect(stopped.inTime && stopped.status == 0, "\(stopped) \(process.log)")
    }
}
