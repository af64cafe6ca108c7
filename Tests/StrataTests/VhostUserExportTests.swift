import CStrataShim
import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// The vhost-user-blk export without a VM: `strata bench --vhost-user` (Strata's own front end)
/// against the export and against qemu-storage-daemon's, a read-only export and a block size the
/// requests do not honour, the export over QMP, and hostile front ends that send what no QEMU
/// would: each loses its connection, the daemon and its other exports go on.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VhostUserExportTests {
    static func bench(_ socket: String, _ arguments: [String]) async throws -> (QemuTool.Result, [String: Any]?) {
        let result = try await QemuTool.run(CommandLineTests.binary, ["bench", "--vhost-user", socket, "--json"] + arguments)
        let json = result.output.split(separator: "\n").last { $0.hasPrefix("{") }
        let report = json.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (result, report)
    }

    static func exportSpec(_ id: String, socket: String, node: String = "disk", extra: String = "") -> String {
        "type=vhost-user-blk,id=\(id),node-name=\(node),addr.type=unix,addr.path=\(socket),writable=on,num-queues=2\(extra)"
    }

    @Test(arguments: VhostUserGuestTests.Backend.allCases)
    func aVerifiedTwoQueueLoadThroughTheFrontEnd(backend: VhostUserGuestTests.Backend) async throws {
        let scratch = try ScratchDirectory("vhost-bench-\(backend.rawValue)")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "raw", image, "64M"])
        let socket = scratch.path("vhost.sock")
        let (daemon, client) = try VhostUserGuestTests.startDaemon(backend, image: image, socket: socket, scratch: scratch)
        let (run, report) = try await Self.bench(socket, ["--queues", "2", "--depth", "16", "--rw", "randrw", "--verify", "--seconds", "1"])
        #expect(run.status == 0, "\(run.output)\n\(daemon.log)")
        #expect(report?["failed"] as? Int == 0 && report?["verify_failures"] as? Int == 0 && report?["lost"] as? Int == 0, "\(run.output)")
        #expect((report?["ops"] as? Int ?? 0) > 1000, "\(run.output)")
        // Two virtqueues, two queues of requests on the node.
        let queues = report?["queues"] as? [[String: Any]] ?? []
        #expect(queues.count == 2 && queues.allSatisfy { ($0["ops"] as? Int ?? 0) > 0 }, "\(run.output)")
        _ = try? client.execute("quit")
        #expect(daemon.stop(timeout: 20).inTime)
    }

    @Test func aReadOnlyExportAndAnUnhonouredBlockSize() async throws {
        let scratch = try ScratchDirectory("vhost-ro")
        let readOnly = scratch.path("ro.sock")
        let large = scratch.path("4k.sock")
        let (daemon, _) = try QMPMonitorTests.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"null-co","node-name":"disk","size":67108864,"read-zeroes":true}"#,
            "--export", "type=vhost-user-blk,id=ro,node-name=disk,addr.type=unix,addr.path=\(readOnly)",
            "--export", Self.exportSpec("big", socket: large, extra: ",logical-block-size=4096"),
        ])
        defer { _ = daemon.stop() }
        let (reads, readReport) = try await Self.bench(readOnly, ["--rw", "randread", "--ops", "500", "--queues", "1"])
        #expect(reads.status == 0 && readReport?["failed"] as? Int == 0, "\(reads.output)")
        let (writes, _) = try await Self.bench(readOnly, ["--rw", "randwrite", "--ops", "10", "--queues", "1"])
        #expect(writes.status != 0 && writes.output.contains("read-only"), "\(writes.output)")
        // 512-byte requests on a device of 4 KiB blocks: each one fails, none reaches the node.
        let (small, smallReport) = try await Self.bench(large, ["--rw", "randread", "--bs", "512", "--ops", "200", "--queues", "1"])
        #expect(smallReport?["failed"] as? Int == 200, "\(small.output)")
        let (aligned, alignedReport) = try await Self.bench(large, ["--rw", "randread", "--bs", "4k", "--ops", "200", "--queues", "2"])
        #expect(alignedReport?["failed"] as? Int == 0 && alignedReport?["ops"] as? Int == 400, "\(aligned.output)")
    }

    @Test func theExportOverQMP() async throws {
        let scratch = try ScratchDirectory("vhost-qmp")
        let socket = scratch.path("vhost.sock")
        let (daemon, qmp) = try QMPMonitorTests.daemon(scratch, extra: ["--blockdev", #"{"driver":"null-co","node-name":"disk","size":67108864}"#])
        defer { _ = daemon.stop() }
        let client = try QMPClient(address: qmp)
        let address: JSONValue = ["type": "unix", "path": .string(socket)]
        let bad = try client.execute("block-export-add", arguments: ["type": "vhost-user-blk", "id": "v0", "node-name": "disk", "addr": address,
                                                                     "num-queues": 0])
        #expect(bad.error?.desc.contains("num-queues") == true, "\(String(describing: bad.error))")
        let added = try client.execute("block-export-add", arguments: ["type": "vhost-user-blk", "id": "v0", "node-name": "disk", "addr": address,
                                                                       "writable": true, "num-queues": 2])
        #expect(!added.isError, "\(String(describing: added.error))")
        let again = try client.execute("block-export-add", arguments: ["type": "vhost-user-blk", "id": "v0", "node-name": "disk", "addr": address])
        #expect(again.error?.desc == "Block export id 'v0' is already in use")
        let listed = try client.execute("query-block-exports")
        #expect(listed.result == .array([["type": "vhost-user-blk", "id": "v0", "node-name": "disk", "shutting-down": false]]), "\(String(describing: listed.result))")
        let (run, report) = try await Self.bench(socket, ["--queues", "2", "--ops", "1000"])
        #expect(run.status == 0 && report?["ops"] as? Int == 2000, "\(run.output)")
        let removed = try client.execute("block-export-del", arguments: ["id": "v0"])
        #expect(!removed.isError)
        #expect(try client.waitForEvent("BLOCK_EXPORT_DELETED", timeoutSeconds: 10)?["data"]?.objectValue?["id"] == .string("v0"))
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket file stays after the export is gone")
        let (gone, _) = try await Self.bench(socket, ["--ops", "10"])
        #expect(gone.status != 0 && gone.output.contains("connect"), "\(gone.output)")
    }

    /// `strata serve --cpus`: every queue executor runs on the CPUs listed, in turn.
    @Test func serveTakesTheCPUsItsQueuesRunOn() async throws {
        let scratch = try ScratchDirectory("vhost-cpus")
        let last = sysconf(Int32(_SC_NPROCESSORS_ONLN)) - 1
        let (daemon, _) = try QMPMonitorTests.daemon(scratch, extra: ["--cpus", "\(last)"])
        defer { _ = daemon.stop() }
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(daemon.pid)/task")
        var queueThreads = 0
        for task in tasks {
            let name = (try? String(contentsOfFile: "/proc/\(daemon.pid)/task/\(task)/comm", encoding: .utf8)) ?? ""
            guard name.hasPrefix("strata-q") else { continue }
            queueThreads += 1
            let status = try String(contentsOfFile: "/proc/\(daemon.pid)/task/\(task)/status", encoding: .utf8)
            let allowed = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: "\t").last
            #expect(allowed.map(String.init) == "\(last)", "\(name): \(String(describing: allowed))")
        }
        #expect(queueThreads == 2)
        let bad = try await QemuTool.run(CommandLineTests.binary, ["serve", "--cpus", "one", "--monitor", "chardev=m0"])
        #expect(bad.status != 0 && bad.output.contains("--cpus must be a comma-separated list of CPU numbers, got 'one'"), "\(bad.output)")
    }

    // MARK: Hostile front ends

    /// One message: header (version 1 unless `flags` says otherwise), payload, descriptors.
    static func message(_ request: UInt32, _ payload: [UInt8] = [], flags: UInt32 = 1, size: UInt32? = nil) -> [UInt8] {
        var bytes: [UInt8] = []
        for value in [request, flags, size ?? UInt32(payload.count)] { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        return bytes + payload
    }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    static func send(_ fd: Int32, _ bytes: [UInt8], descriptors: [Int32] = []) -> Bool {
        var bytes = bytes
        let controlBytes = strata_cmsg_space_fds(Int32(max(descriptors.count, 1)))
        let control = UnsafeMutableRawPointer.allocate(byteCount: controlBytes, alignment: 8)
        defer { control.deallocate() }
        return bytes.withUnsafeMutableBytes { raw in
            var vector = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
            return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                var header = msghdr()
                header.msg_iov = vectorPointer
                header.msg_iovlen = 1
                if !descriptors.isEmpty {
                    header.msg_control = control
                    header.msg_controllen = controlBytes
                    descriptors.withUnsafeBufferPointer { strata_cmsg_put_fds(&header, $0.baseAddress, Int32($0.count)) }
                }
                return sendmsg(fd, &header, Int32(MSG_NOSIGNAL)) == raw.count
            }
        }
    }

    /// Whether the daemon closed the connection within five seconds (replies before that are read
    /// and dropped).
    static func closedByPeer(_ fd: Int32) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        var buffer = [UInt8](repeating: 0, count: 512)
        while Date() < deadline {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if received <= 0 { return true }
        }
        return false
    }

    @Test func hostileFrontEndsLoseOnlyTheirConnection() async throws {
        let scratch = try ScratchDirectory("vhost-hostile")
        let first = scratch.path("v0.sock")
        let second = scratch.path("v1.sock")
        let (daemon, _) = try QMPMonitorTests.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"null-co","node-name":"disk","size":67108864}"#,
            "--export", Self.exportSpec("v0", socket: first), "--export", Self.exportSpec("v1", socket: second),
        ])
        defer { _ = daemon.stop() }
        // A memfd of one page, and a region that claims a megabyte of it.
        let memfd = strata_memfd_create("hostile")
        try #require(memfd >= 0)
        defer { close(memfd) }
        _ = ftruncate(memfd, 4096)
        var pipeFDs: [Int32] = [0, 0]
        try #require(pipe(&pipeFDs) == 0)
        defer { for fd in pipeFDs { close(fd) } }
        let region = Self.le(UInt64(0)) + Self.le(UInt64(1 << 20)) + Self.le(UInt64(0x7000_0000)) + Self.le(UInt64(0))
        let oneRegion = Self.le(UInt32(1)) + Self.le(UInt32(0)) + region
        let cases: [(String, [UInt8], [Int32])] = [
            ("protocol version 0", Self.message(1, flags: 0), []),
            ("a payload larger than any message", Self.message(1, size: 1 << 20), []),
            ("an unknown request", Self.message(99), []),
            ("SET_FEATURES with bits never offered", Self.message(2, Self.le(UInt64.max)), []),
            ("SET_MEM_TABLE without regions", Self.message(5, Self.le(UInt32(0)) + Self.le(UInt32(0))), []),
            ("SET_MEM_TABLE without its descriptor", Self.message(5, oneRegion), []),
            ("SET_MEM_TABLE past the end of its file", Self.message(5, oneRegion), [memfd]),
            ("SET_VRING_NUM on a ring that does not exist", Self.message(8, Self.le(UInt32(7)) + Self.le(UInt32(128))), []),
            ("SET_VRING_NUM of 3 entries", Self.message(8, Self.le(UInt32(0)) + Self.le(UInt32(3))), []),
            ("SET_VRING_KICK with a pipe", Self.message(12, Self.le(UInt64(0))), [pipeFDs[0]]),
            ("GET_CONFIG past the config space", Self.message(24, Self.le(UInt32(250)) + Self.le(UInt32(100)) + Self.le(UInt32(0))
                                                                     + [UInt8](repeating: 0, count: 100)), []),
            ("a header cut short", Array(Self.message(1).prefix(6)), []),
            ("a payload cut short", Array(Self.message(2, Self.le(UInt64(0))).prefix(16)), []),
        ]
        for (name, bytes, descriptors) in cases {
            let fd = try #require(NBDSocket.connectUnix(first))
            #expect(Self.send(fd, bytes, descriptors: descriptors), "\(name): send")
            if name.contains("cut short") { shutdown(fd, Int32(SHUT_WR)) }
            #expect(Self.closedByPeer(fd), "\(name): the connection stayed open")
            close(fd)
        }
        #expect(daemon.reap(wait: false) == nil, "the daemon died: \(daemon.log)")
        // Both exports still serve a well-behaved front end.
        for socket in [first, second] {
            let (run, report) = try await Self.bench(socket, ["--queues", "2", "--ops", "500"])
            #expect(run.status == 0 && report?["ops"] as? Int == 1000, "\(socket): \(run.output)\n\(daemon.log)")
        }
        // A second front end while one is attached is turned away; the first keeps working.
        let attached = try #require(NBDSocket.connectUnix(second))
        defer { close(attached) }
        #expect(Self.send(attached, Self.message(1)))
        #expect(NBDSocket.receiveExactly(attached, 20)?.count == 20, "GET_FEATURES answered")
        let intruder = try #require(NBDSocket.connectUnix(second))
        #expect(Self.closedByPeer(intruder))
        close(intruder)
        #expect(Self.send(attached, Self.message(17)))
        #expect(NBDSocket.receiveExactly(attached, 20)?.suffix(8) == Self.le(UInt64(2))[...], "GET_QUEUE_NUM answers 2")
    }
}
