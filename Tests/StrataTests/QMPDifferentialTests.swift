import Foundation
import Glibc
import Testing

/// The same QMP scenarios (Tests/qmp/scenarios.py, driven by the `qemu.qmp` client) against
/// qemu-storage-daemon and `strata serve`: every step's outcome (return or error class) and
/// what it observed must be equal, and the images both daemons wrote must be identical.
@Suite(.serialized, .timeLimit(.minutes(3))) struct QMPDifferentialTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var python: String { root.appendingPathComponent(".venv/bin/python3").path }
    static var strata: String { root.appendingPathComponent(".build/debug/strata").path }

    /// Starts a daemon with one monitor on `socket`.
    static func startDaemon(_ daemon: String, socket: String, scratch: ScratchDirectory, extra: [String] = []) throws -> NBDServerProcess {
        let monitor = ["--chardev", "socket,id=m0,path=\(socket),server=on,wait=off", "--monitor", "chardev=m0"]
        let command = daemon == "qsd" ? ["qemu-storage-daemon"] + monitor : [strata, "serve"] + monitor + ["--queues", "2"]
        return try NBDServerProcess(command + extra, readiness: .unixSocket(socket), logPath: scratch.path("\(daemon).log"))
    }

    /// Runs the scenarios against one daemon; returns the transcript and the image it wrote.
    static func transcript(_ daemon: String, scratch: ScratchDirectory) async throws -> (steps: [[String: Any]], image: String) {
        let workdir = scratch.path(daemon)
        try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
        let socket = scratch.path("\(daemon).qmp")
        let process = try startDaemon(daemon, socket: socket, scratch: scratch)
        let output = scratch.path("\(daemon).json")
        let run = try await QemuTool.run(python, [root.appendingPathComponent("Tests/qmp/scenarios.py").path, socket, workdir, output])
        try #require(run.status == 0, "scenarios against \(daemon) failed: \(run.output)\n\(daemon) log: \(process.log)")
        let status = process.stop(timeout: 20)
        #expect(status.inTime && status.status == 0, "\(daemon) did not exit 0 after quit: \(status) \(process.log)")
        let data = try Data(contentsOf: URL(fileURLWithPath: output))
        let steps = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        return (steps, workdir + "/disk.raw")
    }

    @Test func strataAnswersAsQemuStorageDaemon() async throws {
        let scratch = try ScratchDirectory("qmp-diff")
        let qsd = try await Self.transcript("qsd", scratch: scratch)
        let strata = try await Self.transcript("strata", scratch: scratch)
        #expect(qsd.steps.count == strata.steps.count)
        for (expected, actual) in zip(qsd.steps, strata.steps) {
            let name = expected["step"] as? String ?? "?"
            #expect(actual["step"] as? String == name)
            // Error texts are QEMU's where Strata has the same failure, but the class is the contract.
            let comparable = { (step: [String: Any]) in step.filter { $0.key != "desc" } }
            #expect(NSDictionary(dictionary: comparable(expected)) == NSDictionary(dictionary: comparable(actual)),
                    "step '\(name)': qemu-storage-daemon \(expected), strata \(actual)")
        }
        // What the negotiation errors say is QEMU's text, word for word.
        for name in ["command before qmp_capabilities", "second qmp_capabilities", "input not an object", "unexpected argument"] {
            let expected = qsd.steps.first { $0["step"] as? String == name }?["desc"] as? String
            let actual = strata.steps.first { $0["step"] as? String == name }?["desc"] as? String
            #expect(expected != nil && expected == actual, "'\(name)': qemu-storage-daemon says \(expected ?? "-"), strata \(actual ?? "-")")
        }
        // Sanity of the scenario itself, as QEMU behaves: these must hold for both.
        let outcomes = Dictionary(strata.steps.map { ($0["step"] as! String, $0["outcome"] as! String) }, uniquingKeysWith: { first, _ in first })
        #expect(outcomes["command before qmp_capabilities"] == "CommandNotFound")
        #expect(outcomes["qemu-io over the export"] == "ok")
        #expect(outcomes["BLOCK_EXPORT_DELETED"] == "ok")
        #expect(outcomes["blockdev-del of an exported node"] == "GenericError")
        let compare = try await QemuTool.run("qemu-img", ["compare", "-f", "raw", "-F", "raw", qsd.image, strata.image])
        #expect(compare.status == 0, "images differ: \(compare.output)")
        // What the jobs left, image by image (through their backing chains, each in its daemon's
        // directory): the same data as qemu-storage-daemon's.
        let qsdDirectory = URL(fileURLWithPath: qsd.image).deletingLastPathComponent().path
        let strataDirectory = URL(fileURLWithPath: strata.image).deletingLastPathComponent().path
        for image in ["m-dst.qcow2", "m-dst2.qcow2", "a-base.qcow2", "c-top.qcow2", "s-top.qcow2", "bk-full.qcow2", "bk-inc.qcow2",
                      "bk-fleeced.qcow2", "sn-a2.qcow2", "sn-b1.qcow2", "bm.qcow2"] {
            let same = try await QemuTool.run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", "\(qsdDirectory)/\(image)",
                                                           "\(strataDirectory)/\(image)"])
            #expect(same.status == 0, "\(image) differs from qemu-storage-daemon's: \(same.output)")
        }
        for image in ["epm1.raw", "epm3.raw", "epm5.raw", "epr1.raw", "epb1.raw"] {
            let same = try await QemuTool.run("qemu-img", ["compare", "-f", "raw", "-F", "raw", "\(qsdDirectory)/\(image)",
                                                           "\(strataDirectory)/\(image)"])
            #expect(same.status == 0, "\(image) differs from qemu-storage-daemon's: \(same.output)")
        }
    }
}
