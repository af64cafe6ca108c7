import Foundation
import StrataDevices
import StrataEngine
import StrataFilters
import StrataGraph
import StrataLoad
import StrataRuntime
import Testing

/// The built-in guest load through whole graphs of real drivers.
@Suite struct LoadRunTests {
    func withEngine(queues: Int, _ body: (Engine) async throws -> Void) async throws {
        let engine = try Engine(queueCount: queues, cpus: nil)
        do {
            try await body(engine)
        } catch {
            await engine.shutdown()
            throw error
        }
        await engine.shutdown()
    }

    func json(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    func defaultGraph(_ engine: Engine, bottom: String = #"{"driver":"null-co","node-name":"null0","size":"64M"}"#, writable: Bool = false) async throws {
        try await engine.controller.apply([
            .addNode(json(bottom)),
            .addNode(json(#"{"driver":"raw","node-name":"raw0","file":"\#(bottom.contains("file0") ? "file0" : "null0")"}"#)),
            .addNode(json(#"{"driver":"throttle","node-name":"throttle0","file":"raw0"}"#)),
            .addBackend(BackendEntry(name: "disk0", nodeName: "throttle0", writable: writable)),
        ])
    }

    func temporaryFile(size: Int) throws -> String {
        let path = FileManager.default.temporaryDirectory.path + "/strata-load-\(UUID().uuidString).img"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: UInt64(size))
        try handle.close()
        return path
    }

    @Test func everyRequestCompletesOnEveryQueue() async throws {
        try await withEngine(queues: 2) { engine in
            try await defaultGraph(engine)
            var spec = WorkloadSpec()
            spec.queueDepth = 16
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(5000))
            #expect(report.ops == 10_000)
            #expect(report.failed == 0)
            #expect(report.lost == 0)
            #expect(report.queues.map(\.ops) == [5000, 5000])
            #expect(report.latencyNs.max >= report.latencyNs.p50)
            #expect(report.graph == ["disk0 -> throttle0 (throttle) -> raw0 (raw) -> null0 (null-co)"])
        }
    }

    @Test func theSameSeedGivesTheSameRequests() {
        var spec = WorkloadSpec()
        spec.mode = .randrw
        var first = RequestStream(spec: spec, capacityBytes: 1 << 30, queueIndex: 1, queueCount: 2)
        var second = RequestStream(spec: spec, capacityBytes: 1 << 30, queueIndex: 1, queueCount: 2)
        spec.seed = 2
        var other = RequestStream(spec: spec, capacityBytes: 1 << 30, queueIndex: 1, queueCount: 2)
        var same = true
        var differs = false
        for _ in 0..<10_000 {
            let a = first.next()
            let b = second.next()
            let c = other.next()
            if a.operation != b.operation || a.block != b.block { same = false }
            if a.operation != c.operation || a.block != c.block { differs = true }
            #expect(a.block % 2 == 1, "queue 1 of 2 owns the odd blocks")
        }
        #expect(same)
        #expect(differs)
    }

    @Test func verifyModeChecksReadsAgainstWritesThroughAFile() async throws {
        let image = try temporaryFile(size: 16 << 20)
        defer { try? FileManager.default.removeItem(atPath: image) }
        try await withEngine(queues: 2) { engine in
            try await defaultGraph(engine, bottom: #"{"driver":"file","node-name":"file0","filename":"\#(image)","cache":"none"}"#, writable: true)
            var spec = WorkloadSpec()
            spec.mode = .randrw
            spec.verify = true
            spec.queueDepth = 8
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(4000))
            #expect(report.failed == 0)
            #expect(report.verifyFailures == 0)
            #expect(report.queues.allSatisfy { $0.reads > 0 && $0.writes > 0 })
        }
    }

    /// Sequential requests published together reach the node as one (QEMU's virtio-blk request
    /// merging): the data still verifies, and the root node counts the merges as QEMU's
    /// `rd_merged` and `wr_merged`.
    @Test func adjacentRequestsAreMergedAndStillVerify() async throws {
        let image = try temporaryFile(size: 4 << 20)
        defer { try? FileManager.default.removeItem(atPath: image) }
        try await withEngine(queues: 1) { engine in
            try await defaultGraph(engine, bottom: #"{"driver":"file","node-name":"file0","filename":"\#(image)","cache":"none"}"#, writable: true)
            var spec = WorkloadSpec()
            spec.mode = .rw
            spec.verify = true
            spec.queueDepth = 16
            // Three passes over the image: later reads check what earlier writes left.
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(3 * 1024))
            #expect(report.failed == 0)
            #expect(report.verifyFailures == 0)
            let root = try #require(try await engine.controller.statistics(of: "throttle0"))
            #expect(root[.read].merged > 0 && root[.write].merged > 0, "read \(root[.read].merged), write \(root[.write].merged) merged")
            // Every guest request is either a node request or merged into one, and the file saw
            // fewer, larger writes than the guest made.
            #expect(root[.read].operations + root[.write].operations + root[.read].merged + root[.write].merged == UInt64(report.ops))
            let file = try #require(try await engine.controller.statistics(of: "file0"))
            #expect(file[.write].operations < UInt64(report.queues[0].writes))
        }
    }

    @Test func verifyModeCatchesWrongData() async throws {
        // null-co drops writes and reads zeros: every read of a written block must be flagged.
        try await withEngine(queues: 1) { engine in
            try await defaultGraph(engine, bottom: #"{"driver":"null-co","node-name":"null0","size":"1M","read-zeroes":true}"#, writable: true)
            var spec = WorkloadSpec()
            spec.mode = .randrw
            spec.verify = true
            spec.queueDepth = 4
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(2000))
            #expect(report.verifyFailures > 0)
        }
    }

    @Test func requestsPastTheEndFailAndAreCounted() async throws {
        try await withEngine(queues: 1) { engine in
            try await defaultGraph(engine)
            var spec = WorkloadSpec()
            spec.queueDepth = 4
            // The guest was built for 64 MiB; mid-run the raw node is replaced by a 1 MiB window,
            // so from then on most requests land past the end and must fail, not vanish.
            let shrink = TimedEdit(atSeconds: 0.02, transaction: try json(#"""
            [{"type":"blockdev-add","data":{"driver":"raw","node-name":"small","file":"null0","size":1048576}},
             {"type":"blockdev-replace","data":{"node-name":"raw0","with":"small"}}]
            """#))
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .seconds(1.0), edits: [shrink])
            #expect(report.edits.first?.error == nil)
            #expect(report.failed > 0)
            #expect(report.failed < report.ops)
            #expect(try await engine.controller.backendSizeBytes("disk0") == 1 << 20)
        }
    }

    @Test func editsUnderLoadOnTwoQueuesLoseNothing() async throws {
        try await withEngine(queues: 2) { engine in
            try await defaultGraph(engine)
            var spec = WorkloadSpec()
            spec.queueDepth = 16
            var edits: [TimedEdit] = []
            for round in 0..<10 {
                let at = 0.05 + Double(round) * 0.06
                edits.append(TimedEdit(atSeconds: at, transaction: try json(#"{"type":"insert-filter","data":{"above":"raw0","filter":{"driver":"throttle","node-name":"t\#(round)"}}}"#)))
                edits.append(TimedEdit(atSeconds: at + 0.03, transaction: try json(#"{"type":"remove-filter","data":{"node-name":"t\#(round)"}}"#)))
            }
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .seconds(0.8), edits: edits)
            #expect(report.failed == 0)
            #expect(report.lost == 0)
            #expect(report.ops > 0)
            #expect(report.edits.count == 20)
            #expect(report.edits.allSatisfy { $0.error == nil })
            #expect(Set(report.edits.map(\.version)).count == 20)
            #expect(report.edits.contains { $0.requestsInFlightAcross > 0 })
            // Every inserted filter was removed again and its node closed.
            #expect(await engine.controller.model.nodes.keys.sorted() == ["null0", "raw0", "throttle0"])
        }
    }

    @Test func throttleLimitsChangeOnARunningGraph() async throws {
        try await withEngine(queues: 2) { engine in
            try await engine.controller.apply([
                .addNode(json(#"{"driver":"null-co","node-name":"null0","size":"64M"}"#)),
                .addNode(json(#"{"driver":"throttle","node-name":"throttle0","file":"null0","throttle-group":"tg0","limits":{"iops-total":2000}}"#)),
                .addBackend(BackendEntry(name: "disk0", nodeName: "throttle0", writable: false)),
            ])
            var spec = WorkloadSpec()
            spec.queueDepth = 8
            // Limited at first, then lifted by a reopen with new limits while requests wait in the group.
            let lift = TimedEdit(atSeconds: 0.2, transaction: try json(#"{"type":"blockdev-reopen","data":{"driver":"throttle","node-name":"throttle0","file":"null0","throttle-group":"tg0","limits":{}}}"#))
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .seconds(0.5), edits: [lift])
            #expect(report.edits.first?.error == nil)
            #expect(report.failed == 0)
            #expect(report.lost == 0)
            // The run went on after the switch (LoadRun holds it open), so requests crossed it,
            // and the group the node shares has no limits any more.
            #expect(report.edits.first?.requestsInFlightAcross ?? 0 > 0)
            let group = engine.controller.sharedObjects.existing(named: ThrottleFilter.sharedObjectName(group: "tg0"), as: ThrottleGroup.self)
            #expect(group != nil && group?.isEnabled == false)
        }
    }

    @Test func aFailedEditDuringARunChangesNothing() async throws {
        try await withEngine(queues: 1) { engine in
            try await defaultGraph(engine)
            var spec = WorkloadSpec()
            spec.queueDepth = 4
            let edit = TimedEdit(atSeconds: 0.05, transaction: try json(#"""
            [{"type":"insert-filter","data":{"above":"raw0","filter":{"driver":"throttle","node-name":"t"}}},
             {"type":"blockdev-del","data":{"node-name":"null0"}}]
            """#))
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .seconds(0.2), edits: [edit])
            #expect(report.failed == 0)
            #expect(report.edits.first?.error?.contains("in use") == true)
            #expect(await engine.controller.model.nodes["t"] == nil)
        }
    }
}
