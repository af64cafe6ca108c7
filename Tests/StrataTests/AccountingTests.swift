import Foundation
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime
import Testing

/// Per-node, per-queue accounting: every node counts what reaches it, by the fast route, the
/// waiting route and past a full route trail, and the counts survive graph edits.
@Suite(.serialized) struct AccountingTests {
    func withEngine(queues: Int = 1, accounting: Bool = true, _ body: (Engine) async throws -> Void) async throws {
        let engine = try Engine(queueCount: queues, cpus: nil, accounting: accounting)
        do {
            try await body(engine)
        } catch {
            await engine.shutdown()
            throw error
        }
        await engine.shutdown()
    }

    func json(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    /// A port on queue 0 for `backend`: requests sent through it run on that queue.
    func port(_ engine: Engine, _ backend: String = "disk0") async throws -> BackendPort {
        let port = BackendPort(backendName: backend, queue: engine.queues[0])
        try await engine.controller.attach(port)
        return port
    }

    func stats(_ engine: Engine, _ node: String) async throws -> NodeStatsSnapshot {
        try #require(try await engine.controller.statistics(of: node))
    }

    @Test func latencyBucketsCoverEveryLatencyInOrder() {
        var previous = -1
        for exponent in 0..<63 {
            for value in [UInt64(1) << exponent, (UInt64(1) << exponent) + (UInt64(1) << exponent) / 3] {
                let index = LatencyBuckets.index(ofNs: value)
                #expect(index >= previous, "bucket of \(value) goes backwards")
                #expect(index < LatencyBuckets.count)
                if index < LatencyBuckets.count - 1 {
                    #expect(LatencyBuckets.lowerBoundNs(of: index) <= value && value <= LatencyBuckets.upperBoundNs(of: index),
                            "\(value) outside its bucket \(index)")
                    // At most a quarter wide past the exact buckets: percentiles are that precise.
                    let low = LatencyBuckets.lowerBoundNs(of: index)
                    let high = LatencyBuckets.upperBoundNs(of: index)
                    #expect(low < 8 || Double(high - low + 1) <= Double(low) / 4 + 1)
                }
                previous = index
            }
        }
        var counts = [UInt64](repeating: 0, count: LatencyBuckets.count)
        counts[LatencyBuckets.index(ofNs: 1000)] = 98
        counts[LatencyBuckets.index(ofNs: 50_000)] = 2
        #expect(LatencyBuckets.percentileNs(0.5, counts: counts) == LatencyBuckets.upperBoundNs(of: LatencyBuckets.index(ofNs: 1000)))
        #expect(LatencyBuckets.percentileNs(0.99, counts: counts) == LatencyBuckets.upperBoundNs(of: LatencyBuckets.index(ofNs: 50_000)))
        #expect(LatencyBuckets.percentileNs(0.5, counts: [UInt64](repeating: 0, count: LatencyBuckets.count)) == nil)
    }

    /// throttle0 -> raw0 (offset 1 MiB) -> null0: each node counts the requests that reach it,
    /// with QEMU's classes; a request raw refuses is invalid above and absent below.
    @Test func everyNodeCountsWhatReachesIt() async throws {
        try await withEngine { engine in
            try await engine.controller.apply([
                .addNode(json(#"{"driver":"null-co","node-name":"null0","size":"64M"}"#)),
                .addNode(json(#"{"driver":"raw","node-name":"raw0","file":"null0","offset":1048576}"#)),
                .addNode(json(#"{"driver":"throttle","node-name":"throttle0","file":"raw0"}"#)),
                .addBackend(BackendEntry(name: "disk0", nodeName: "throttle0", writable: true)),
            ])
            let port = try await port(engine)
            let buffer = AlignedBuffer(count: 8192)
            for index in 0..<10 {
                #expect(await port.submit(BlockRequest(operation: .read, offsetBytes: UInt64(index) * 4096, lengthBytes: 4096, buffer: buffer.slice(from: 0, count: 4096))).isOK)
            }
            for index in 0..<5 {
                #expect(await port.submit(BlockRequest(operation: .write, offsetBytes: UInt64(index) << 20, lengthBytes: 8192, buffer: buffer.io)).isOK)
            }
            #expect(await port.submit(BlockRequest(operation: .writeZeroes, offsetBytes: 10 << 20, lengthBytes: 65536)).isOK)
            #expect(await port.submit(BlockRequest(operation: .discard, offsetBytes: 0, lengthBytes: 65536)).isOK)
            #expect(await port.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0)).isOK)
            #expect(await port.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0)).isOK)
            // Past the end of raw's window (64 MiB less its offset): EINVAL from raw.
            #expect(await port.submit(BlockRequest(operation: .read, offsetBytes: 63 << 20, lengthBytes: 4096 << 8, buffer: .empty)) == .invalid)

            for node in ["throttle0", "raw0", "null0"] {
                let stats = try await stats(engine, node)
                #expect(stats[.read].operations == 10 && stats[.read].bytes == 40960, "\(node): \(stats[.read])")
                #expect(stats[.write].operations == 6 && stats[.write].bytes == 5 * 8192 + 65536, "\(node): \(stats[.write])")
                #expect(stats[.unmap].operations == 1 && stats[.unmap].bytes == 65536, "\(node)")
                #expect(stats[.flush].operations == 2, "\(node)")
                #expect(stats[.read].failed == 0 && stats[.write].failed == 0)
                #expect(stats[.read].invalid == (node == "null0" ? 0 : 1), "\(node): \(stats[.read])")
                // Every completed read has a latency (refused ones do not).
                #expect(stats[.read].latencyBuckets.reduce(0, +) == 10 && stats[.read].percentileNs(0.99) != nil, "\(node)")
                #expect(stats.lastCompletionNs != nil)
            }
            // Null completes in the pass that routed to it: its reads took no time.
            #expect(try await stats(engine, "null0")[.read].latencyBuckets[0] == 10)
            #expect(try await stats(engine, "raw0").highestWriteOffset == 10 << 20 + 65536)
            #expect(try await stats(engine, "null0").highestWriteOffset == 11 << 20 + 65536, "raw's offset shifts what null sees")
        }
    }

    /// Requests that wait for the kernel (a file node) are timed, and a failure is counted as
    /// failed, with its time, not as an operation.
    @Test func requestsThatWaitAreTimed() async throws {
        let scratch = try ScratchDirectory("accounting-file")
        let image = scratch.path("disk.raw")
        #expect(FileManager.default.createFile(atPath: image, contents: Data(count: 4 << 20)))
        try await withEngine { engine in
            try await engine.controller.apply([
                .addNode(json(#"{"driver":"file","node-name":"file0","filename":"\#(image)"}"#)),
                .addNode(json(#"{"driver":"raw","node-name":"raw0","file":"file0","read-only":true}"#)),
                .addBackend(BackendEntry(name: "disk0", nodeName: "raw0", writable: false)),
            ])
            let port = try await port(engine)
            let buffer = AlignedBuffer(count: 4096)
            for index in 0..<20 {
                #expect(await port.submit(BlockRequest(operation: .read, offsetBytes: UInt64(index) * 4096, lengthBytes: 4096, buffer: buffer.io)).isOK)
            }
            #expect(await port.submit(BlockRequest(operation: .write, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)) == .readOnly)
            for node in ["raw0", "file0"] {
                let read = try await stats(engine, node)[.read]
                #expect(read.operations == 20 && read.bytes == 20 * 4096, "\(node): \(read)")
                #expect(read.totalTimeNs > 0 && read.latencyBuckets.dropFirst().reduce(0, +) > 0, "\(node): reads were timed")
                #expect(read.latencyBuckets.reduce(0, +) == 20, "\(node): every read in one bucket")
                #expect((read.percentileNs(0.5) ?? 0) > 0)
            }
            let raw = try await stats(engine, "raw0")[.write]
            #expect(raw.operations == 0 && raw.failed == 1 && raw.bytes == 0, "\(raw)")
            #expect(try await stats(engine, "file0")[.write].failed == 0, "raw refused the write: file never saw it")
        }
    }

    /// More forwarding nodes than a route trail holds (nine filters over null), through device
    /// queues: every node counts every request exactly once, on both queues.
    @Test func aDeepStackCountsEachRequestOnceAtEveryNode() async throws {
        try await withEngine(queues: 2) { engine in
            var edits: [GraphEdit] = [.addNode(try json(#"{"driver":"null-co","node-name":"null0","size":"64M"}"#))]
            var below = "null0"
            for level in 0..<9 {
                edits.append(.addNode(try json(#"{"driver":"throttle","node-name":"t\#(level)","file":"\#(below)"}"#)))
                below = "t\(level)"
            }
            edits.append(.addBackend(BackendEntry(name: "disk0", nodeName: below, writable: true)))
            try await engine.controller.apply(edits)
            var spec = WorkloadSpec()
            spec.mode = .randrw
            spec.queueDepth = 8
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(3000))
            #expect(report.ops == 6000 && report.failed == 0)
            for node in ["t8", "t4", "t0", "null0"] {
                let stats = try await stats(engine, node)
                #expect(stats[.read].operations + stats[.write].operations == 6000, "\(node): \(stats[.read].operations) + \(stats[.write].operations)")
                #expect(stats[.read].latencyBuckets.reduce(0, +) == stats[.read].operations, "\(node)")
            }
        }
    }

    /// Statistics belong to the node, not to a graph version: edits keep them, a new filter starts
    /// from zero, and a removed node's are gone.
    @Test func statisticsSurviveEditsAndLeaveWithTheirNode() async throws {
        try await withEngine { engine in
            try await engine.controller.apply([
                .addNode(json(#"{"driver":"null-co","node-name":"null0","size":"64M"}"#)),
                .addBackend(BackendEntry(name: "disk0", nodeName: "null0", writable: false)),
            ])
            let port = try await port(engine)
            let buffer = AlignedBuffer(count: 4096)
            func read(_ count: Int) async {
                for _ in 0..<count { _ = await port.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)) }
            }
            await read(5)
            try await engine.controller.apply([.insertFilterAbove(node: "null0", filter: json(#"{"driver":"copy-on-read","node-name":"cor0"}"#))])
            await read(7)
            #expect(try await stats(engine, "null0")[.read].operations == 12)
            #expect(try await stats(engine, "cor0")[.read].operations == 7)
            try await engine.controller.apply([.removeFilter("cor0")])
            await read(1)
            #expect(try await stats(engine, "null0")[.read].operations == 13)
            await #expect(throws: GraphError.self) { _ = try await engine.controller.statistics(of: "cor0") }
            #expect(await engine.controller.statisticsOfAllNodes().map(\.name) == ["null0"])
        }
    }

    @Test func withAccountingOffNoNodeKeepsStatistics() async throws {
        try await withEngine(accounting: false) { engine in
            try await engine.controller.apply([.addNode(json(#"{"driver":"null-co","node-name":"null0"}"#))])
            #expect(try await engine.controller.statistics(of: "null0") == nil)
            #expect(try await engine.controller.accounting(of: "null0") == nil)
            #expect(await engine.controller.statisticsOfAllNodes().isEmpty)
        }
    }

    /// QEMU's custom histograms count from when they are set, one class at a time, and go away
    /// when cleared.
    @Test func customHistogramsCountFromWhenTheyAreSet() async throws {
        try await withEngine(queues: 2) { engine in
            try await engine.controller.apply([
                .addNode(json(#"{"driver":"null-co","node-name":"null0","size":"64M"}"#)),
                .addBackend(BackendEntry(name: "disk0", nodeName: "null0", writable: true)),
            ])
            let port = try await port(engine)
            let buffer = AlignedBuffer(count: 4096)
            for _ in 0..<3 { _ = await port.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)) }
            let accounting = try #require(try await engine.controller.accounting(of: "null0"))
            await accounting.setCustomHistograms([.read: [1_000, 1_000_000]])
            for _ in 0..<4 { _ = await port.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)) }
            _ = await port.submit(BlockRequest(operation: .write, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io))
            var snapshot = try await stats(engine, "null0")
            let read = try #require(snapshot.customHistograms[.read])
            #expect(read.boundaries == [1_000, 1_000_000] && read.bins.reduce(0, +) == 4, "the 4 reads since the set: \(read)")
            #expect(snapshot.customHistograms[.write] == nil)
            await accounting.setCustomHistograms([.read: [], .write: [], .flush: []])
            snapshot = try await stats(engine, "null0")
            #expect(snapshot.customHistograms.isEmpty)
        }
    }
}
