import Foundation
import StrataEngine
import StrataGraph
import StrataLoad
import StrataRuntime
import Synchronization
import Testing
@testable import StrataFilters

private let millisecond: UInt64 = 1_000_000

/// Yields until `condition` holds. Other tasks run in between; no real time passes.
private func waitUntil(_ what: String = #function, _ condition: () -> Bool) async {
    for _ in 0..<5_000_000 {
        if condition() { return }
        await Task.yield()
    }
    Issue.record("gave up waiting: \(what)")
}

/// Requests admitted by a scheduler, in order, with the virtual time each went.
private final class AdmissionLog: Sendable {
    let entries = Locked<[(tenant: Int, ns: UInt64)]>([])
    var count: Int { entries.withLock { $0.count } }
}

@Suite struct PolicyFilterTests {
    @Test func theSchedulerWaitsOnTheQueueClockForWhatThePolicyHoldsBack() async {
        let clock = VirtualClock()
        let policy = TokenBucketPolicy(tenants: [TokenBucketPolicy.Tenant(iops: 10, iopsBurst: 2)])
        let scheduler = PolicyScheduler(policy: policy, maxInFlight: 64, nowNs: 0)
        let log = AdmissionLog()
        for _ in 0..<4 {
            Task {
                let admitted = await scheduler.admit(tenant: 0, isWrite: false, bytes: 4096, offsetBytes: 0, clock: clock)
                log.entries.withLock { $0.append((admitted.tenant, clock.nowNs)) }
                scheduler.finished(admitted, clock: clock)
            }
        }
        await waitUntil { log.count == 2 && scheduler.queued == 2 && clock.sleeperCount == 1 }
        #expect(clock.nextDeadlineNs == 100 * millisecond)
        clock.advance(toNs: 100 * millisecond)
        await waitUntil { log.count == 3 && clock.sleeperCount == 1 }
        clock.advance(toNs: 200 * millisecond)
        await waitUntil { log.count == 4 }
        #expect(log.entries.withLock { $0.map(\.ns) } == [0, 0, 100 * millisecond, 200 * millisecond])
        #expect(scheduler.inFlight == 0)
        #expect(scheduler.queued == 0)
    }

    @Test func atMostMaxInFlightReachTheChildAndACompletionLetsTheNextGo() async {
        let clock = VirtualClock()
        let scheduler = PolicyScheduler(policy: FifoPolicy(), maxInFlight: 2, nowNs: 0)
        let admitted = Locked<[PolicyRequest]>([])
        for index in 0..<5 {
            let offset = UInt64(index) * 4096
            Task { @Sendable in
                let request = await scheduler.admit(tenant: 0, isWrite: false, bytes: 4096, offsetBytes: offset, clock: clock)
                admitted.withLock { $0.append(request) }
            }
            await waitUntil { scheduler.inFlight + scheduler.queued == index + 1 }
        }
        await waitUntil { admitted.withLock { $0.count } == 2 }
        #expect(scheduler.inFlight == 2)
        #expect(scheduler.queued == 3)
        let first = admitted.withLock { $0[0] }
        scheduler.finished(first, clock: clock)
        await waitUntil { admitted.withLock { $0.count } == 3 }
        // Arrival order: the third request to arrive is the third to go.
        #expect(admitted.withLock { $0.map(\.offsetBytes) } == [0, 4096, 8192])
        #expect(scheduler.inFlight == 2)
        for request in admitted.withLock({ $0 }).dropFirst() { scheduler.finished(request, clock: clock) }
        await waitUntil { admitted.withLock { $0.count } == 5 }
        for request in admitted.withLock({ $0 }).suffix(2) { scheduler.finished(request, clock: clock) }
        #expect(scheduler.inFlight == 0)
        #expect(scheduler.dispatched == 5)
    }

    @Test func everyPolicyIsABlockdevDriverThatPassesEveryRequest() async throws {
        for policy in SchedulingPolicyCatalog.policies {
            let engine = try Engine(queueCount: 2, cpus: nil)
            do {
                try await engine.controller.apply(json: JSONValue.parse("""
                    [{"type":"blockdev-add","data":{"driver":"null-co","node-name":"null0","size":"64M"}},
                     {"type":"blockdev-add","data":{"driver":"\(policy.driverName)","node-name":"policy0","file":"null0",
                      "max-in-flight":4,"tenants":[{},{}]}},
                     {"type":"backend-add","data":{"id":"disk0","node-name":"policy0","writable":true}}]
                    """))
                var spec = WorkloadSpec()
                spec.mode = .randrw
                spec.queueDepth = 8
                let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .opsPerQueue(2000))
                #expect(report.ops == 4000, "\(policy.driverName)")
                #expect(report.failed == 0, "\(policy.driverName)")
                #expect(report.graph == ["disk0 -> policy0 (\(policy.driverName)) -> null0 (null-co)"])
            } catch {
                Issue.record("\(policy.driverName): \(error)")
            }
            await engine.shutdown()
        }
    }

    @Test func deviceQueuesAreTenantsAndWeightsSplitTheDevice() async throws {
        // A sim device that serves one 4 KiB read at a time in 200 us: the bottleneck. Queue 1 has
        // three times queue 0's weight; both keep 16 requests waiting, so the device's time is
        // split 1:3 however fast the machine runs.
        let engine = try Engine(queueCount: 2, cpus: nil)
        do {
            try await engine.controller.apply(json: JSONValue.parse("""
                [{"type":"blockdev-add","data":{"driver":"sim","node-name":"disk","size":"16M","service-read-us":200}},
                 {"type":"blockdev-add","data":{"driver":"wfq","node-name":"policy0","file":"disk","max-in-flight":1,
                  "tenants":[{"weight":1},{"weight":3}]}},
                 {"type":"backend-add","data":{"id":"disk0","node-name":"policy0","writable":false}}]
                """))
            var spec = WorkloadSpec()
            spec.queueDepth = 16
            let report = try await LoadRun.run(controller: engine.controller, backend: "disk0", spec: spec, length: .seconds(1))
            let ops = report.queues.map(\.ops)
            #expect(ops.count == 2)
            let ratio = Double(ops[1]) / Double(max(ops[0], 1))
            #expect(ratio > 2.5 && ratio < 3.5, "queue ops \(ops)")
        } catch {
            Issue.record("\(error)")
        }
        await engine.shutdown()
    }

    @Test func badPolicyOptionsAreRefusedAtBlockdevAdd() async throws {
        let engine = try Engine(queueCount: 1, cpus: nil)
        func refusal(_ node: String) async -> String {
            do {
                try await engine.controller.apply(json: JSONValue.parse("""
                    [{"type":"blockdev-add","data":{"driver":"null-co","node-name":"n\(UUID().uuidString.prefix(8))","size":"1M"}}]
                    """))
                try await engine.controller.apply(json: JSONValue.parse("[{\"type\":\"blockdev-add\",\"data\":\(node)}]"))
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        try await engine.controller.apply(json: JSONValue.parse(#"[{"type":"blockdev-add","data":{"driver":"null-co","node-name":"base","size":"1M"}}]"#))
        #expect(await refusal(#"{"driver":"mclock","node-name":"p1","file":"base"}"#) == "p1: Parameter 'tenants' is missing")
        #expect(await refusal(#"{"driver":"mclock","node-name":"p2","file":"base","tenants":[{"limit":-1}]}"#)
            == "p2: Parameter 'tenants.0.limit' must be between 0 and 1099511627776, got -1")
        #expect(await refusal(#"{"driver":"fifo","node-name":"p3","file":"base","tenants":[{}],"max-in-flight":0}"#)
            == "p3: Parameter 'max-in-flight' must be between 1 and 4096, got 0")
        #expect(await refusal(#"{"driver":"token-bucket","node-name":"p4","file":"base","tenants":{"0":{"iops":5},"2":{}}}"#)
            == "p4: Parameter 'tenants' expects keys 0 to 1, missing 1")
        await engine.shutdown()
    }

    @Test func exportsAreTenantsByTheirXTenantTag() async throws {
        // Two NBD exports of one token-bucket node: export "slow" (x-tenant=1) may send one
        // request a second, export "fast" (x-tenant=0) is unlimited. Once the first of qemu-io's
        // four reads of "slow" is done, the other three wait three seconds for their tokens; fifty
        // reads of "fast" meanwhile go through. Were both exports one tenant, "slow" would be done
        // at once.
        let scratch = try ScratchDirectory("policy-exports")
        let socket = scratch.path("s.sock")
        let server = try NBDServerProcess([
            CommandLineTests.binary, "serve",
            "--blockdev", #"{"driver":"sim","node-name":"disk","size":"16M","service-read-us":50}"#,
            "--blockdev", #"{"driver":"token-bucket","node-name":"policy","file":"disk","tenants":[{},{"iops":1,"iops-burst":1}]}"#,
            "--nbd-server", "addr.type=unix,addr.path=\(socket)",
            "--export", "type=nbd,id=e0,node-name=policy,name=fast,x-tenant=0",
            "--export", "type=nbd,id=e1,node-name=policy,name=slow,x-tenant=1",
        ], readiness: .listeningLines(1), logPath: scratch.path("serve.log"))
        defer { _ = server.stop() }
        let slow = Process()
        slow.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Line-buffered: qemu-io buffers a pipe otherwise, and its first line would come at its exit.
        slow.arguments = ["stdbuf", "-oL", "qemu-io", "-r", "-f", "raw"] + (0..<4).flatMap { ["-c", "read \($0 * 4096) 4k"] } + ["nbd+unix:///slow?socket=\(socket)"]
        let output = Pipe()
        slow.standardOutput = output
        slow.standardError = output
        let printed = Locked("")
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            printed.withLock { $0 += String(decoding: data, as: UTF8.self) }
        }
        try slow.run()
        defer { if slow.isRunning { slow.terminate() } }
        for _ in 0..<2000 where !printed.withLock({ $0.contains("read 4096/4096 bytes") }) && slow.isRunning {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(printed.withLock { $0.contains("read 4096/4096 bytes") }, "\(printed.withLock { $0 })")
        var reads: [String] = []
        for index in 0..<50 { reads += ["-c", "read \(index * 4096) 4k"] }
        let fast = try await QemuTool.run("qemu-io", ["-r", "-f", "raw"] + reads + ["nbd+unix:///fast?socket=\(socket)"])
        #expect(fast.status == 0, "\(fast.output)")
        #expect(slow.isRunning, "the slow export's reads were not held back: \(printed.withLock { $0 })")
        for _ in 0..<2000 where slow.isRunning { try await Task.sleep(for: .milliseconds(10)) }
        output.fileHandleForReading.readabilityHandler = nil
        #expect(slow.terminationStatus == 0)
    }
}
