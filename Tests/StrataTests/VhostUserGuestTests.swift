import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// A real guest on the vhost-user-blk export: qemu-system-x86_64 (TCG) boots a Debian kernel and a
/// busybox initramfs (Tests/guest/build-guest.sh) with two vCPUs and `num-queues=2`. The guest
/// sees two queues, reads what qemu-io wrote, writes patterns qemu-io reads back afterwards,
/// discards, and turns its write cache off and on again; writes made with the cache off are each
/// followed by a flush on the node. Every scenario runs against qemu-storage-daemon too, to check
/// the test's own expectations.
@Suite(.serialized, .timeLimit(.minutes(5))) struct VhostUserGuestTests {
    enum Backend: String, CaseIterable { case strata, qsd }

    /// The guest's kernel and initramfs, built once per machine (the script keeps its output).
    static let guest: Result<(kernel: String, initramfs: String), GuestBuildError> = {
        let directory = NSTemporaryDirectory() + "strata-guest"
        let output = directory + "/out"
        let script = QMPDifferentialTests.root.appendingPathComponent("Tests/guest/build-guest.sh").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script, output]
        process.environment = ProcessInfo.processInfo.environment.merging(["GUEST_DIR": directory]) { $1 }
        let log = directory + ".log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)
        process.standardOutput = handle
        process.standardError = handle
        do { try process.run() } catch { return .failure(GuestBuildError(description: "cannot run \(script): \(error)")) }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            return .failure(GuestBuildError(description: "build-guest.sh failed: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")"))
        }
        return .success((output + "/vmlinux", output + "/initramfs.cpio.gz"))
    }()

    struct GuestBuildError: Error, CustomStringConvertible { let description: String }

    /// A daemon serving `image` (raw, discard passed down) as vhost-user-blk export `v0` on
    /// `socket` with two queues, and its QMP monitor. `slow`: through a throttle of 40 IOPS, so
    /// that a request is almost always in flight.
    static func startDaemon(_ backend: Backend, image: String, socket: String, scratch: ScratchDirectory,
                            slow: Bool = false) throws -> (NBDServerProcess, QMPClient) {
        let qmp = scratch.path("\(backend.rawValue)-\(UUID().uuidString.prefix(6)).qmp")
        let throttle = slow ? ["--object", "throttle-group,id=tg,limits.iops-total=40",
                               "--blockdev", #"{"driver":"throttle","node-name":"slow","throttle-group":"tg","file":"disk"}"#] : []
        let process = try QMPDifferentialTests.startDaemon(backend.rawValue, socket: qmp, scratch: scratch, extra: [
            "--blockdev", #"{"driver":"file","node-name":"f0","filename":"\#(image)","discard":"unmap"}"#,
            "--blockdev", #"{"driver":"raw","node-name":"disk","file":"f0","discard":"unmap"}"#,
        ] + throttle + [
            "--export", "type=vhost-user-blk,id=v0,node-name=\(slow ? "slow" : "disk"),addr.type=unix,addr.path=\(socket),writable=on,num-queues=2",
        ])
        // The monitor may come up before the export's socket (qemu-storage-daemon's order).
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: socket) && Date() < deadline { usleep(10_000) }
        return (process, try QMPClient(address: qmp))
    }

    /// qemu-system-x86_64 on TCG with the guest, two vCPUs and a two-queue vhost-user-blk disk.
    static func startGuest(socket: String, scratch: ScratchDirectory, cmdline: String = "", reconnect: Bool = false) throws -> NBDServerProcess {
        let (kernel, initramfs) = try guest.get()
        return try NBDServerProcess([
            "qemu-system-x86_64", "-machine", "q35,accel=tcg,memory-backend=mem",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-m", "256M", "-smp", "2",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initramfs, "-append", "console=ttyS0 quiet \(cmdline)",
            "-chardev", "socket,id=c,path=\(socket)" + (reconnect ? ",reconnect=1" : ""),
            "-device", "vhost-user-blk-pci,chardev=c,num-queues=2",
        ], readiness: .started, logPath: scratch.path("guest-\(UUID().uuidString.prefix(6)).log"))
    }

    static func field(_ name: String, in output: String) -> String? {
        guard let range = output.range(of: " \(name)=") else { return nil }
        return String(output[range.upperBound...].prefix { !$0.isWhitespace })
    }

    static func operations(_ client: QMPClient, node: String, _ key: String) throws -> Int64 {
        guard case .array(let entries)? = try client.execute("query-blockstats", arguments: ["query-nodes": true]).result,
              let stats = entries.compactMap(\.objectValue).first(where: { $0["node-name"] == .string(node) })?["stats"]?.objectValue,
              case .int(let count)? = stats[key] else { return -1 }
        return count
    }

    @Test(arguments: Backend.allCases)
    func aGuestReadsWritesDiscardsAndTurnsItsCacheOff(backend: Backend) async throws {
        let scratch = try ScratchDirectory("vhost-guest-\(backend.rawValue)")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "raw", image, "64M"])
        try await QemuTool.require("qemu-io", ["-f", "raw", "-c", "write -P 0x42 0 4M", "-c", "write -P 0x66 32M 1M", image])
        let socket = scratch.path("vhost.sock")
        let (daemon, client) = try Self.startDaemon(backend, image: image, socket: socket, scratch: scratch)
        let guest = try Self.startGuest(socket: socket, scratch: scratch, cmdline: "oracle.w2count=16")
        let done = guest.waitForOutput("ORACLE-DONE", timeout: 180)
        let output = guest.stdoutText
        #expect(done, "the guest did not finish: \(output)\n\(backend) log: \(daemon.log)\nqemu log: \(guest.log)")
        #expect(Self.field("mq_queues", in: output) == "2", "\(output)")
        // qemu-storage-daemon 7.2 leaves the config's writeback byte 0: its guests start write-through.
        #expect(Self.field("cache", in: output) == (backend == .strata ? "write_back" : "write_through"), "\(output)")
        for check in ["read", "write", "discard", "wce"] {
            #expect(Self.field(check, in: output) == "PASS", "\(check) in \(output)\n\(daemon.log)")
        }
        // Sixteen writes with the cache off: each was made durable before it completed.
        // qemu-storage-daemon's node statistics cannot show this: it counts requests on its block
        // backend only, and its nodes report 0 for everything.
        if backend == .strata {
            let flushes = try Self.operations(client, node: "f0", "flush_operations")
            #expect(flushes >= 16, "\(backend): \(flushes) flushes on the file node")
        }
        // The guest's writes span pages (a 1 MiB write over 256 of them): each reaches the node as
        // one request, not one per page (about 18 requests in all; one per page would be over 400).
        // qemu-storage-daemon counts requests on its block backend only: its nodes report 0.
        if backend == .strata {
            let writes = try Self.operations(client, node: "f0", "wr_operations")
            #expect(writes > 0 && writes < 64, "\(backend): \(writes) writes on the file node")
        }
        _ = guest.stop(timeout: 10)
        _ = try? client.execute("quit")
        #expect(daemon.stop(timeout: 20).inTime)
        let verify = try await QemuTool.run("qemu-io", ["-f", "raw", "-c", "read -P 0x55 16M 1M", "-c", "read -P 0x77 40M 1M",
                                                        "-c", "read -P 0 32M 1M", "-c", "read -P 0x42 0 4M", image])
        #expect(verify.status == 0 && !verify.output.contains("Pattern verification failed"), "\(backend): \(verify.output)")
    }

    /// The daemon stops (SIGTERM: it finishes what it popped) or dies (SIGKILL, under a throttle
    /// so that a request is in flight) and a new one starts on the same socket while the guest
    /// writes: QEMU reconnects, the queues resume (after a death, from the inflight region QEMU
    /// kept, serving again what was popped and never returned), and every write the guest made
    /// is there afterwards.
    @Test(arguments: Backend.allCases, [SIGTERM, SIGKILL])
    func aGuestWritesOnWhileTheDaemonRestarts(backend: Backend, signal: Int32) async throws {
        let scratch = try ScratchDirectory("vhost-restart-\(backend.rawValue)")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "raw", image, "64M"])
        let socket = scratch.path("vhost.sock")
        let killed = signal == SIGKILL
        let (first, _) = try Self.startDaemon(backend, image: image, socket: socket, scratch: scratch, slow: killed)
        let guest = try Self.startGuest(socket: socket, scratch: scratch, cmdline: "oracle.mode=loop oracle.loops=24", reconnect: true)
        #expect(guest.waitForOutput("ORACLE-LOOP 3", timeout: 180), "\(guest.stdoutText)\n\(first.log)")
        #expect(first.stop(signal: signal, timeout: 20).inTime, "the first daemon did not stop: \(first.log)")
        let (second, client) = try Self.startDaemon(backend, image: image, socket: socket, scratch: scratch, slow: killed)
        let done = guest.waitForOutput("ORACLE-DONE", timeout: 180)
        #expect(done && Self.field("loop", in: guest.stdoutText) == "PASS", "\(guest.stdoutText)\n\(second.log)\nqemu: \(guest.log)")
        _ = guest.stop(timeout: 10)
        _ = try? client.execute("quit")
        #expect(second.stop(timeout: 20).inTime)
        let reads = (0..<24).flatMap { ["-c", "read -P \($0 + 1) \(16 * 1_048_576 + $0 * 65536) 64k"] }
        let verify = try await QemuTool.run("qemu-io", ["-f", "raw"] + reads + [image])
        #expect(verify.status == 0 && !verify.output.contains("Pattern verification failed"), "\(backend): \(verify.output)")
    }
}
