import Foundation
import FoundationXML
import StrataRuntime
import Testing
@testable import StrataLab

private func scenario(_ json: String) throws -> LabScenario {
    try LabScenarioParser.parse(data: Data(json.utf8), name: "test")
}

private func run(_ json: String) async throws -> LabResult {
    try await LabRunner.run(scenario(json))
}

private func refusal(_ json: String) -> String {
    do {
        _ = try scenario(json)
        return "accepted"
    } catch {
        return "\(error)"
    }
}

/// The scheduling lab's known results: what each policy is for, reproduced on simulated time with
/// tolerances that the wrong policy (shown beside it) fails.
@Suite struct LabTests {
    /// After the mClock paper's experiment: three tenants with a reservation, weights and a limit
    /// on a device of 2000 IOPS (4 in parallel, 2 ms each). By weight alone (1:3:2) rd would get
    /// 333; mClock gives it its reservation of 600, holds dm at its limit of 500 and splits the
    /// rest (900) to oltp.
    static let threeTenants = """
        {"seed": 7, "duration-ms": 30000, "interval-ms": 1000,
         "device": {"service-read-us": 2000, "service-distribution": "exponential", "service-parallelism": 4},
         "tenants": [
           {"name": "rd", "rw": "randread", "iodepth": 4, "reservation": 600, "weight": 1},
           {"name": "oltp", "rw": "randrw", "bs": "8k", "iodepth": 32, "weight": 3},
           {"name": "dm", "rw": "randwrite", "bs": "16k", "iodepth": 32, "weight": 2, "limit": 500}],
         "policies": [{"driver": "fifo", "max-in-flight": 4}, {"driver": "mclock", "max-in-flight": 4},
                      {"driver": "wfq", "max-in-flight": 4}]}
        """

    @Test func mclockMeetsReservationsHoldsLimitsAndSplitsTheRestByWeight() async throws {
        let result = try await run(Self.threeTenants)
        let mclock = try #require(result.policy("mclock"))
        let rd = try #require(mclock.tenant("rd"))
        let oltp = try #require(mclock.tenant("oltp"))
        let dm = try #require(mclock.tenant("dm"))
        #expect(rd.reservationMet == true)
        #expect(rd.iops > 570 && rd.iops < 680, "rd \(rd.iops)")
        #expect(dm.limitExceeded == false)
        #expect(dm.iops > 470 && dm.iops <= 525, "dm \(dm.iops)")
        #expect(oltp.iops > 820 && oltp.iops < 980, "oltp \(oltp.iops)")
        #expect(abs(mclock.totalIops - 2000) < 100, "total \(mclock.totalIops)")
        // Without reservations and limits the same tenants fare otherwise: FIFO serves by depth
        // (rd's 4 of 68 outstanding), weights alone give rd a sixth.
        let fifo = try #require(result.policy("fifo"))
        #expect(fifo.tenant("rd")?.reservationMet == false)
        #expect(fifo.tenant("dm")?.limitExceeded == true)
        // Weighted fair queueing shares bytes by weight (1:3:2), whatever the request sizes.
        let wfq = try #require(result.policy("wfq"))
        let bytes = ["rd", "oltp", "dm"].map { wfq.tenant($0)?.mibPerSecond ?? 0 }
        #expect(abs(bytes[1] / bytes[0] - 3) < 0.3 && abs(bytes[2] / bytes[0] - 2) < 0.2, "MiB/s \(bytes)")
    }

    @Test func mclockSplitsWhatIsLeftAfterReservationsByWeight() async throws {
        // 2000 IOPS; "a" is promised 800, more than its weighted share (1 of 4, 500). mClock gives
        // it 800 and splits the other 1200 between "b" and "c" by their weights 2:1.
        let result = try await run("""
            {"seed": 3, "duration-ms": 30000,
             "device": {"service-read-us": 2000, "service-distribution": "exponential", "service-parallelism": 4},
             "tenants": [{"name": "a", "iodepth": 16, "reservation": 800, "weight": 1},
                         {"name": "b", "iodepth": 16, "weight": 2}, {"name": "c", "iodepth": 16, "weight": 1}],
             "policies": [{"driver": "mclock", "max-in-flight": 4}, {"driver": "fifo", "max-in-flight": 4}]}
            """)
        let mclock = try #require(result.policy("mclock"))
        let (a, b, c) = (mclock.tenant("a")?.iops ?? 0, mclock.tenant("b")?.iops ?? 0, mclock.tenant("c")?.iops ?? 0)
        #expect(a > 770 && a < 850, "a \(a)")
        #expect(abs(b / c - 2) < 0.15, "b \(b), c \(c)")
        #expect(mclock.tenant("a")?.reservationMet == true)
        // FIFO splits by depth: equal thirds, 667 each, short of a's reservation.
        let fifo = try #require(result.policy("fifo"))
        #expect(abs((fifo.tenant("b")?.iops ?? 0) / (fifo.tenant("c")?.iops ?? 1) - 1) < 0.1)
        #expect(fifo.tenant("a")?.reservationMet == false)
    }

    @Test func leakyBucketBurstsAtItsMaxRateWhereATokenBucketSpendsItsBurstAtOnce() async throws {
        // One tenant asks for 2000 IOPS for 4 s from a fast device. Both policies allow 100 IOPS on
        // average and a burst of 1000 requests. QEMU's leaky bucket (iops-total-max 500 for
        // iops-total-max-length 2 s) lets the burst through at 500 IOPS; the bucket fills at
        // 500 - 100 a second, so the burst lasts 2.5 s. The token bucket lets its 1000 tokens go as
        // fast as requests come: 2000 IOPS for about half a second.
        let result = try await run("""
            {"duration-ms": 10000, "interval-ms": 100,
             "device": {"service-read-us": 10, "service-parallelism": 64},
             "tenants": [{"name": "vm", "arrival": "uniform", "rate": 2000, "stop-ms": 4000}],
             "policies": [
               {"driver": "leaky-bucket", "max-in-flight": 64,
                "tenants": {"vm": {"iops-total": 100, "iops-total-max": 500, "iops-total-max-length": 2}}},
               {"driver": "token-bucket", "max-in-flight": 64, "tenants": {"vm": {"iops": 100, "iops-burst": 1000}}}]}
            """)
        let leaky = try #require(result.policy("leaky-bucket")?.tenant("vm"))
        let token = try #require(result.policy("token-bucket")?.tenant("vm"))
        // The first interval also holds the burst bucket's own size (max / 10, as QEMU's).
        #expect((leaky.timeline.dropFirst().max() ?? 0) <= 560, "leaky peak \(leaky.timeline.dropFirst().max() ?? 0)/s")
        #expect((token.timeline.max() ?? 0) >= 1900, "token peak \(token.timeline.max() ?? 0)/s")
        let tokenBurst = token.timeline.prefix(while: { $0 > 300 }).count
        let leakyBurst = leaky.timeline.prefix(while: { $0 > 300 }).count
        #expect((5...6).contains(tokenBurst), "token burst intervals \(tokenBurst)")
        #expect((24...27).contains(leakyBurst), "leaky burst intervals \(leakyBurst)")
        // After the bursts both hold the same mean rate while requests wait.
        for tenant in [leaky, token] {
            let late = tenant.timeline[40..<100]
            let mean = late.reduce(0, +) / Double(late.count)
            #expect(abs(mean - 100) < 8, "late mean \(mean)")
        }
    }

    @Test func fifoStarvesALowDepthTenantThatFairQueueingServes() async throws {
        let result = try await run("""
            {"duration-ms": 20000,
             "device": {"service-read-us": 1000, "service-distribution": "exponential"},
             "tenants": [{"name": "small", "iodepth": 1}, {"name": "big", "iodepth": 31}],
             "policies": [{"driver": "fifo", "max-in-flight": 1}, {"driver": "wfq", "max-in-flight": 1},
                          {"driver": "mclock", "max-in-flight": 1}]}
            """)
        // FIFO: one request in 32 is small's, about 31 of 1000 IOPS; fair policies give it half.
        let fifo = try #require(result.policy("fifo"))
        #expect((fifo.tenant("small")?.iops ?? 0) < 50)
        #expect(fifo.jainIndex < 0.6)
        for name in ["wfq", "mclock"] {
            let fair = try #require(result.policy(name))
            #expect((fair.tenant("small")?.iops ?? 0) > 450, "\(name): \(fair.tenant("small")?.iops ?? 0)")
            #expect(fair.jainIndex > 0.99, "\(name): \(fair.jainIndex)")
        }
    }

    @Test func deadlineBoundsReadLatencyUnderAWriteFlood() async throws {
        let result = try await run("""
            {"duration-ms": 20000,
             "device": {"service-read-us": 1000, "service-write-us": 1000},
             "tenants": [{"name": "reader", "rw": "randread", "iodepth": 1},
                         {"name": "flood", "rw": "randwrite", "iodepth": 64}],
             "policies": [{"driver": "fifo", "max-in-flight": 1},
                          {"driver": "deadline", "max-in-flight": 1, "fifo-batch": 16}]}
            """)
        // FIFO: each read waits behind the 64 writes queued before it.
        let fifoRead = try #require(result.policy("fifo")?.tenant("reader"))
        #expect(fifoRead.p50Us > 60_000, "fifo read p50 \(fifoRead.p50Us) us")
        // Deadline: a read waits at most for the write batch under way (16 writes) and its own service.
        let deadline = try #require(result.policy("deadline"))
        let read = try #require(deadline.tenant("reader"))
        #expect(read.maxUs <= 17_100, "deadline read max \(read.maxUs) us")
        // And writes are not starved: the reader has one request at a time, so it can take at most half.
        #expect((deadline.tenant("flood")?.iops ?? 0) > 500)
    }

    @Test func theSameScenarioAndSeedGiveTheSameNumbersToTheLastDigit() async throws {
        let first = try await run(Self.threeTenants)
        let second = try await run(Self.threeTenants)
        #expect(LabReport.json(first) == LabReport.json(second))
        #expect(LabReport.csv(first) == LabReport.csv(second))
        var reseeded = try scenario(Self.threeTenants)
        reseeded.seed = 8
        let third = try await LabRunner.run(reseeded)
        #expect(LabReport.json(third) != LabReport.json(first))
    }

    @Test func everyPolicySeesTheSameRequestStreams() {
        let tenant = LabTenant(name: "a", readPerMille: 700, isRandom: true, blockSize: 4096, arrival: .poisson(rate: 1000),
                               startNs: 0, stopNs: 1_000_000_000)
        var first = LabRequestStream(tenant: tenant, index: 1, seed: 42, deviceSizeBytes: 1 << 30)
        var second = LabRequestStream(tenant: tenant, index: 1, seed: 42, deviceSizeBytes: 1 << 30)
        var other = LabRequestStream(tenant: tenant, index: 0, seed: 42, deviceSizeBytes: 1 << 30)
        var differs = false
        for _ in 0..<1000 {
            let (a, b, c) = (first.nextRequest(), second.nextRequest(), other.nextRequest())
            #expect(a.offsetBytes == b.offsetBytes && a.isWrite == b.isWrite && a.serviceDraw == b.serviceDraw)
            if a.offsetBytes != c.offsetBytes { differs = true }
            #expect(first.nextArrivalNs == second.nextArrivalNs)
            first.arrived()
            second.arrived()
        }
        #expect(differs, "another tenant's stream is its own")
    }

    @Test func theRealClockRunsTheSameScenarioThroughTheFilterNode() async throws {
        let path = FileManager.default.temporaryDirectory.path + "/strata-lab-\(UUID().uuidString).img"
        _ = FileManager.default.createFile(atPath: path, contents: Data(count: 8 << 20))
        defer { try? FileManager.default.removeItem(atPath: path) }
        for device in [#"{"service-read-us": 200, "service-parallelism": 2, "size": "8M"}"#,
                       #"{"driver": "file", "filename": "\#(path)", "size": "8M"}"#] {
            let result = try await run("""
                {"clock": "real", "duration-ms": 300, "device": \(device),
                 "tenants": [{"name": "a", "iodepth": 2, "reservation": 10}, {"name": "b", "rw": "randwrite", "arrival": "poisson", "rate": 200}],
                 "policies": [{"driver": "fifo"}, {"driver": "mclock", "max-in-flight": 2}]}
                """)
            #expect(result.clock == .real)
            for policy in result.policies {
                for tenant in policy.tenants { #expect(tenant.completed > 0, "\(device) \(policy.policy) \(tenant.tenant)") }
            }
        }
    }

    @Test func badScenariosAreRefusedWithWhatAndWhere() {
        let device = #""device": {"service-read-us": 100}"#
        let tenants = #""tenants": [{"name": "a"}]"#
        let policies = #""policies": [{"driver": "fifo"}]"#
        #expect(refusal("{") .hasPrefix("not valid JSON"))
        #expect(refusal("[]") == "the scenario must be a JSON object, got an array")
        #expect(refusal("{\(device), \(tenants), \(policies)}") == "scenario: Parameter 'duration-ms' is missing")
        #expect(refusal(#"{"duration-ms": 10, "durration": 1, \#(device), \#(tenants), \#(policies)}"#)
            == "scenario: Parameter 'durration' is unexpected")
        #expect(refusal(#"{"duration-ms": 10, \#(device), \#(tenants), "policies": [{"driver": "cfq"}]}"#)
            == "policies[0]: Parameter 'driver' names no scheduling policy ('cfq'); known: fifo, leaky-bucket, token-bucket, mclock, deadline, wfq")
        #expect(refusal(#"{"duration-ms": 10, \#(device), \#(tenants), "policies": [{"driver": "mclock", "tenants": {"b": {}}}]}"#)
            == "policy 'mclock': Parameter 'tenants.b' names no tenant of the scenario")
        #expect(refusal(#"{"duration-ms": 10, \#(device), \#(tenants), "policies": [{"driver": "mclock", "tenants": {"a": {"weigth": 2}}}]}"#)
            == "policy 'mclock': Parameter 'tenants.0.weigth' is unexpected")
        #expect(refusal(#"{"duration-ms": 10, \#(device), "tenants": [{"name": "a", "rate": 5}], \#(policies)}"#)
            == "tenant 'a': Parameter 'rate' applies to open-loop arrivals (poisson, bursty, uniform); a closed loop sets iodepth")
        #expect(refusal(#"{"duration-ms": 10, \#(device), "tenants": [{"name": "a", "start-ms": 5, "stop-ms": 5}], \#(policies)}"#)
            == "tenant 'a': Parameter 'stop-ms' must be after start-ms (5), got 5")
        #expect(refusal(#"{"duration-ms": 10, "device": {"driver": "file", "filename": "/dev/null"}, \#(tenants), \#(policies)}"#)
            == "device: Parameter 'driver' 'file' is a real device: it needs \"clock\": \"real\"")
        #expect(refusal(#"{"duration-ms": 10, "device": {"slow-every-us": 10, "slow-for-us": 10}, \#(tenants), \#(policies)}"#)
            == "device: Parameter 'slow-for-us' must be shorter than slow-every-us (10), got 10")
        #expect(refusal(#"{"duration-ms": 10, \#(device), "tenants": [{"name": "a"}, {"name": "a"}], \#(policies)}"#)
            == "tenants[1]: Parameter 'name' 'a' names two tenants")
    }

    @Test func theReportsCarryTheSameFiguresAndThePlotsAreSVG() async throws {
        let result = try await run(Self.threeTenants)
        let csv = LabReport.csv(result).split(separator: "\n")
        #expect(csv.count == 1 + 3 * 3)
        let json = try JSONSerialization.jsonObject(with: Data(LabReport.json(result).utf8)) as? [String: Any]
        let policies = json?["policies"] as? [[String: Any]]
        #expect(policies?.count == 3)
        let firstTenant = (policies?.first?["tenants"] as? [[String: Any]])?.first
        let iops = result.policies[0].tenants[0].iops
        #expect(abs((firstTenant?["iops"] as? Double ?? 0) - iops) <= iops * 1e-12)
        for svg in [LabPlots.latencyCDF(result), LabPlots.throughput(result)] {
            #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
            #expect(svg.components(separatedBy: "<polyline").count - 1 == 9)
            let document = try XMLDocument(data: Data(svg.utf8))
            #expect(document.rootElement()?.name == "svg")
        }
        let table = LabReport.table(result)
        #expect(table.contains("Jain's index"))
        #expect(table.contains("MISSED"))
    }
}
