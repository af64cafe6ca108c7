import Foundation
import Glibc
import StrataControl
import StrataGraph
import Testing

/// Statistics over QMP and the `--stats` stream, driven by real I/O from qemu-io over NBD.
@Suite(.serialized, .timeLimit(.minutes(3))) struct QMPStatisticsTests {
    struct Daemon {
        let process: NBDServerProcess
        let client: QMPClient
        let statsSocket: String
        let uri: String
    }

    /// null0 <- raw0 exported writable over NBD, with a monitor and a 50 ms statistics stream.
    func daemon(_ scratch: ScratchDirectory) throws -> Daemon {
        let nbd = scratch.path("nbd.sock")
        let stats = scratch.path("stats.sock")
        let (process, socket) = try QMPMonitorTests.daemon(scratch, extra: [
            "--blockdev", "driver=null-co,node-name=null0,size=67108864",
            "--blockdev", "driver=raw,node-name=raw0,file=null0",
            "--nbd-server", "addr.type=unix,addr.path=\(nbd)",
            "--export", "type=nbd,id=e0,node-name=raw0,name=disk,writable=on",
            "--stats", "unix:\(stats),interval-ms=50",
        ])
        return Daemon(process: process, client: try QMPClient(address: socket), statsSocket: stats, uri: "nbd+unix:///disk?socket=\(nbd)")
    }

    func qemuIO(_ uri: String, _ commands: [String]) async throws {
        let run = try await QemuTool.run("qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [uri])
        try #require(run.status == 0 && !run.output.contains("failed"), "\(run.output)")
    }

    /// query-blockstats' entry for `node`, by name.
    func blockStats(_ client: QMPClient, _ node: String) throws -> [String: JSONValue] {
        guard case .array(let entries)? = try client.execute("query-blockstats", arguments: ["query-nodes": true]).result else {
            Issue.record("query-blockstats gave no array")
            return [:]
        }
        let entry = entries.compactMap(\.objectValue).first { $0["node-name"] == .string(node) }
        return try #require(entry?["stats"]?.objectValue, "no stats for \(node) in \(entries)")
    }

    @Test func queryBlockstatsCountsEveryNode() async throws {
        let scratch = try ScratchDirectory("qmp-blockstats")
        let daemon = try daemon(scratch)
        defer { _ = daemon.process.stop() }
        let before = try blockStats(daemon.client, "null0")
        try await qemuIO(daemon.uri, ["write -P 7 0 64k", "write -P 7 1M 64k", "write -P 7 2M 4k", "flush", "discard 4M 64k"])
        for node in ["raw0", "null0"] {
            let stats = try blockStats(daemon.client, node)
            func count(_ key: String) -> Int64 { if case .int(let value)? = stats[key] { value } else { -1 } }
            func was(_ key: String) -> Int64 { if case .int(let value)? = before[key] { value } else { -1 } }
            #expect(count("wr_operations") - was("wr_operations") == 3, "\(node): \(stats)")
            #expect(count("wr_bytes") - was("wr_bytes") == 2 * 65536 + 4096, "\(node)")
            #expect(count("wr_highest_offset") == (2 << 20) + 4096, "\(node)")
            #expect(count("unmap_operations") == 1 && count("unmap_bytes") == 65536, "\(node)")
            #expect(count("flush_operations") >= 1, "\(node)")
            #expect(stats["account_invalid"] == .bool(true) && stats["timed_stats"] == .array([]))
            #expect(count("idle_time_ns") >= 0, "a node that completed requests reports its idle time")
        }
        // The raw node's entry carries its file's as `parent`, as QEMU's does.
        guard case .array(let entries)? = try daemon.client.execute("query-blockstats", arguments: ["query-nodes": true]).result else { return }
        let raw = try #require(entries.compactMap(\.objectValue).first { $0["node-name"] == .string("raw0") })
        #expect(raw["parent"]?.objectValue?["node-name"] == .string("null0"))
        #expect(try daemon.client.execute("query-blockstats").result == .array([]))
    }

    @Test func latencyHistogramsAsQemuSetsThem() async throws {
        let scratch = try ScratchDirectory("qmp-histogram")
        let daemon = try daemon(scratch)
        defer { _ = daemon.process.stop() }
        let set = try daemon.client.execute("block-latency-histogram-set", arguments: ["id": "raw0", "boundaries": [1_000, 100_000, 10_000_000]])
        #expect(!set.isError, "\(String(describing: set.error))")
        try await qemuIO(daemon.uri, ["read 0 4k", "read 4k 4k", "read 8k 4k", "write 0 4k"])
        let stats = try blockStats(daemon.client, "raw0")
        let read = try #require(stats["rd_latency_histogram"]?.objectValue, "\(stats)")
        #expect(read["boundaries"] == .array([.int(1_000), .int(100_000), .int(10_000_000)]))
        guard case .array(let bins)? = read["bins"] else { Issue.record("no bins"); return }
        let counted = bins.reduce(Int64(0)) { if case .int(let value) = $1 { $0 + value } else { $0 } }
        guard case .int(let reads)? = stats["rd_operations"] else { Issue.record("no rd_operations"); return }
        #expect(bins.count == 4 && counted == reads, "every read since the set is in a bin: \(bins) vs \(reads)")
        #expect(stats["wr_latency_histogram"] != nil && stats["flush_latency_histogram"] != nil)

        let readOnly = try daemon.client.execute("block-latency-histogram-set", arguments: ["id": "raw0", "boundaries-read": [10]])
        #expect(!readOnly.isError)
        #expect(try blockStats(daemon.client, "raw0")["wr_latency_histogram"] != nil, "only the read histogram changed")
        #expect(!(try daemon.client.execute("block-latency-histogram-set", arguments: ["id": "raw0"]).isError))
        #expect(try blockStats(daemon.client, "raw0")["rd_latency_histogram"] == nil, "no boundaries clears them all")

        let unknown = try daemon.client.execute("block-latency-histogram-set", arguments: ["id": "nothing", "boundaries": [10]])
        #expect(unknown.error?.desc == "Device 'nothing' not found")
        let decreasing = try daemon.client.execute("block-latency-histogram-set", arguments: ["id": "raw0", "boundaries": [10, 5]])
        #expect(decreasing.error?.desc.hasPrefix("Device 'raw0' set read boundaries fail") == true, "\(String(describing: decreasing.error))")
        let wrongType = try daemon.client.execute("block-latency-histogram-set", arguments: ["id": "raw0", "boundaries": "10"])
        #expect(wrongType.error?.desc.contains("'boundaries'") == true)
    }

    /// The stream's deltas add up to exactly the requests made, and `strata stats` shows them.
    @Test func theStatsStreamAddsUpToTheRequestsMade() async throws {
        let scratch = try ScratchDirectory("qmp-stream")
        let daemon = try daemon(scratch)
        defer { _ = daemon.process.stop() }
        let stream = try StatsClient(path: daemon.statsSocket)
        // A client that never reads misses samples; it cannot hold the others back.
        let idle = try #require(NBDSocket.connectUnix(daemon.statsSocket))
        defer { close(idle) }
        _ = try stream.nextSample()
        try await qemuIO(daemon.uri, ["write 0 64k", "write 64k 64k", "write 1M 4k", "write 2M 4k", "write 3M 4k"])
        var written: Int64 = 0
        var samples = 0
        // Samples arrive every 50 ms; within a few of the writes, all five are counted.
        while written < 5 && samples < 200 {
            let sample = try stream.nextSample().fields
            samples += 1
            guard case .array(let nodes)? = sample["nodes"] else { Issue.record("no nodes in \(sample)"); return }
            let null = try #require(nodes.compactMap(\.objectValue).first { $0["node-name"] == .string("null0") })
            if case .int(let value)? = null["wr_operations"] { written += value }
            #expect(null["driver"] == .string("null-co"))
            if case .int(let value)? = null["wr_operations"], value > 0 {
                #expect(null["wr_latency_ns"]?.objectValue?["p99.9"] != nil, "a class with requests has percentiles")
            }
        }
        #expect(written == 5, "the deltas of \(samples) samples")

        let table = try await QemuTool.run(CommandLineTests.binary, ["stats", daemon.statsSocket, "--count", "2"])
        #expect(table.status == 0 && table.output.contains("null-co") && table.output.contains("rd p99.9"), "\(table.output)")
        let lines = try await QemuTool.run(CommandLineTests.binary, ["stats", "unix:" + daemon.statsSocket, "--count", "3", "--json"])
        #expect(lines.status == 0 && lines.output.split(separator: "\n").count == 3, "\(lines.output)")
        let missing = try await QemuTool.run(CommandLineTests.binary, ["stats", scratch.path("nothing.sock"), "--count", "1"])
        #expect(missing.status != 0 && missing.output.contains("nothing.sock"), "\(missing.output)")
    }

    @Test func aBadStatsOptionIsNamed() async throws {
        for (spec, expected) in [("tcp:1234", "expected unix:PATH"), ("unix:/tmp/x,interval-ms=0", "interval-ms"),
                                 ("unix:/tmp/x,bogus=1", "unknown option 'bogus=1'"), ("unix:", "path is empty")] {
            let run = try await QemuTool.run(CommandLineTests.binary, ["serve", "--chardev", "socket,id=m0,path=/tmp/unused.sock,server=on,wait=off",
                                                                       "--monitor", "chardev=m0", "--stats", spec])
            #expect(run.status != 0 && run.output.contains(expected), "\(spec): \(run.output)")
        }
    }
}
