import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// Strata's atomic cancel of several mirrors (`transaction` with `x-block-job-cancel` actions):
/// the targets stop at one cut of the guest's writes. A client writes a counter to disk A, then
/// to disk B, each acknowledged before the next; whatever the cut, target B then holds the same
/// counter as target A or the one before it, never one from another instant.
@Suite(.serialized, .timeLimit(.minutes(3))) struct AtomicCancelTests {
    static func counter(_ image: String, scratch: ScratchDirectory) async throws -> UInt64 {
        let raw = scratch.path(URL(fileURLWithPath: image).lastPathComponent + ".raw")
        try await QemuTool.require("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, raw])
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: raw))
        defer { try? handle.close() }
        let bytes = try #require(try handle.read(upToCount: 8))
        return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    static func progress(_ path: String) -> UInt64 {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { UInt64($0) } ?? 0
    }

    static func waitForProgress(_ path: String, atLeast value: UInt64) {
        for _ in 0..<20000 where progress(path) < value { usleep(1000) }
    }

    @Test func mirrorsCancelledInOneTransactionStopAtOneInstant() async throws {
        let scratch = try ScratchDirectory("atomic-cancel")
        var nodes: [String] = []
        for name in ["a", "b", "ta", "tb"] {
            try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", scratch.path("\(name).qcow2"), "8M"])
            nodes += ["--blockdev", #"{"driver":"qcow2","node-name":"\#(name)","file":{"driver":"file","filename":"\#(scratch.path("\(name).qcow2"))"}}"#]
        }
        let nbdSocket = scratch.path("nbd.sock")
        let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: nodes + [
            "--nbd-server", "addr.type=unix,addr.path=\(nbdSocket)",
            "--export", "type=nbd,id=ea,node-name=a,name=diskA,writable=on",
            "--export", "type=nbd,id=eb,node-name=b,name=diskB,writable=on",
        ])
        defer { _ = process.stop() }
        let client = try QMPClient(address: socket)
        for (job, source, target) in [("m0", "a", "ta"), ("m1", "b", "tb")] {
            BackupTests.expectOK(try client.execute("blockdev-mirror", arguments: ["job-id": .string(job), "device": .string(source),
                                                                                  "target": .string(target), "sync": "full"]), job)
        }
        for _ in 0..<2 { #expect(try client.waitForEvent("BLOCK_JOB_READY", timeoutSeconds: 30) != nil, "\(process.log)") }

        let progressFile = scratch.path("progress")
        let stopFile = scratch.path("stop")
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        writer.arguments = [QMPDifferentialTests.root.appendingPathComponent("Tests/nbd/alternating_writer.py").path, nbdSocket, "diskA", "diskB",
                            progressFile, stopFile]
        try writer.run()
        defer { if writer.isRunning { writer.terminate() } }
        Self.waitForProgress(progressFile, atLeast: 200)
        let before = Self.progress(progressFile)
        #expect(before >= 200, "the writer is writing")

        // Not READY, unknown, named twice: refused, and nothing stops.
        #expect(try client.execute("transaction", arguments: ["actions": [["type": "x-block-job-cancel", "data": ["device": "nothing"]]]]).isError)
        #expect(try client.execute("transaction", arguments: ["actions": [["type": "x-block-job-cancel", "data": ["device": "m0"]],
                                                                           ["type": "x-block-job-cancel", "data": ["device": "m0"]]]]).isError)
        BackupTests.expectOK(try client.execute("transaction", arguments: ["actions": [
            ["type": "x-block-job-cancel", "data": ["device": "m0"]],
            ["type": "x-block-job-cancel", "data": ["device": "m1"]],
        ]]), "atomic cancel")
        for _ in 0..<2 {
            let completed = try #require(try client.waitForEvent("BLOCK_JOB_COMPLETED", timeoutSeconds: 30), "\(process.log)")
            #expect(completed["data"]?.objectValue?["error"] == nil, "\(completed)")
        }
        // The guest goes on writing the sources; the targets keep the cut.
        Self.waitForProgress(progressFile, atLeast: Self.progress(progressFile) + 200)
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        writer.waitUntilExit()
        #expect(writer.terminationStatus == 0, "the writer saw every write succeed")
        _ = try client.execute("quit")
        #expect(process.stop(timeout: 20).inTime)

        let a = try await Self.counter(scratch.path("ta.qcow2"), scratch: scratch)
        let b = try await Self.counter(scratch.path("tb.qcow2"), scratch: scratch)
        let sourceA = try await Self.counter(scratch.path("a.qcow2"), scratch: scratch)
        #expect(a >= before, "the cut came after the writes before the transaction: a=\(a), before=\(before)")
        #expect(b == a || b + 1 == a, "the targets hold one instant: a=\(a), b=\(b)")
        #expect(sourceA > a + 100, "the sources went on: source a=\(sourceA), target a=\(a)")
        for image in ["a", "b", "ta", "tb"] {
            let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", scratch.path("\(image).qcow2")])
            #expect(check.status == 0, "\(image): \(check.output)")
        }
    }
}
