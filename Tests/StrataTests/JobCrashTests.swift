import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// SIGKILL of the daemon in the middle of a stream, a commit, a mirror or a backup (of the top,
/// with a persistent bitmap): every image stays free of corruption (qemu-img check: leaks at
/// most) and the chain reads exactly what it read before.
@Suite(.serialized, .timeLimit(.minutes(3))) struct JobCrashTests {
    enum Kind: String, CaseIterable { case stream, commit, mirror, backup }

    /// base (0x11 everywhere) <- mid (0x22 over 8-24 MiB) <- top (0x44 at 2 MiB), and the raw
    /// image of what top reads.
    func chain(_ scratch: ScratchDirectory) async throws -> (base: String, mid: String, top: String, reference: String) {
        let base = scratch.path("base.qcow2")
        let mid = scratch.path("mid.qcow2")
        let top = scratch.path("top.qcow2")
        let reference = scratch.path("reference.raw")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", base, "32M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 32M", base])
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x22 8M 16M", mid])
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x44 2M 64k", top])
        try await QemuTool.require("qemu-img", ["convert", "-O", "raw", top, reference])
        return (base, mid, top, reference)
    }

    @Test(arguments: Kind.allCases, [0.1, 0.5, 0.8])
    func aKilledJobLeavesTheChainIntact(kind: Kind, fraction: Double) async throws {
        let scratch = try ScratchDirectory("job-crash-\(kind.rawValue)")
        let images = try await chain(scratch)
        var nodes: [String] = []
        for (name, path, backing) in [("base", images.base, "null"), ("mid", images.mid, "\"base\""), ("top", images.top, "\"mid\"")] {
            nodes += ["--blockdev", #"{"driver":"file","node-name":"\#(name)-file","filename":"\#(path)"}"#,
                      "--blockdev", #"{"driver":"qcow2","node-name":"\#(name)","file":"\#(name)-file","backing":\#(backing)}"#]
        }
        let target = scratch.path("target.qcow2")
        if kind == .backup || kind == .mirror {
            try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", target, "32M"])
            nodes += ["--blockdev", #"{"driver":"qcow2","node-name":"target","file":{"driver":"file","filename":"\#(target)"}}"#]
        }
        let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: nodes)
        let client = try QMPClient(address: socket)
        let command: String
        let arguments: [String: JSONValue]
        switch kind {
        case .stream:
            (command, arguments) = ("block-stream", ["job-id": "j", "device": "top", "base-node": "base", "speed": .int(8 << 20)])
        case .commit:
            (command, arguments) = ("block-commit", ["job-id": "j", "device": "top", "top-node": "mid", "base-node": "base", "speed": .int(8 << 20)])
        case .mirror:
            (command, arguments) = ("blockdev-mirror", ["job-id": "j", "device": "top", "target": "target", "sync": "full", "speed": .int(8 << 20)])
        case .backup:
            let added = try client.execute("block-dirty-bitmap-add", arguments: ["node": "top", "name": "b0", "persistent": true])
            #expect(!added.isError, "\(String(describing: added.error))")
            (command, arguments) = ("blockdev-backup", ["job-id": "j", "device": "top", "target": "target", "sync": "full", "bitmap": "b0",
                                                        "bitmap-mode": "on-success", "speed": .int(8 << 20)])
        }
        let started = try client.execute(command, arguments: arguments)
        #expect(!started.isError, "\(String(describing: started.error))")
        // Until the job has done `fraction` of its work (or is already gone), then kill.
        for _ in 0..<2000 {
            guard case .array(let jobs)? = try client.execute("query-jobs").result,
                  let job = jobs.first?.objectValue, case .int(let current)? = job["current-progress"],
                  case .int(let total)? = job["total-progress"] else { break }
            if total > 0 && Double(current) >= Double(total) * fraction { break }
            usleep(2000)
        }
        let killed = process.stop(signal: SIGKILL, timeout: 10)
        #expect(killed.inTime)
        for image in [images.base, images.mid, images.top] + (kind == .backup || kind == .mirror ? [target] : []) {
            let check = try await QemuTool.runOnceUnlocked("qemu-img", ["check", "-f", "qcow2", image])
            // 0: clean; 3: leaked clusters only (a crash mid-allocation may leak, never corrupt).
            #expect(check.status == 0 || check.status == 3, "\(kind) at \(fraction): \(image): \(check.output)")
        }
        let compare = try await QemuTool.run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", images.reference, images.top])
        #expect(compare.status == 0, "\(kind) at \(fraction): top no longer reads what it did: \(compare.output)")
    }
}
