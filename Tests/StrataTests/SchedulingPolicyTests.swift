import StrataFilters
import StrataGraph
import Testing

// MARK: Harness

private let millisecond: UInt64 = 1_000_000
private let second: UInt64 = 1_000_000_000

private func request(_ tenant: Int, _ ticket: Int, write: Bool = false, bytes: Int = 4096, offset: UInt64 = 0) -> PolicyRequest {
    PolicyRequest(tenant: tenant, isWrite: write, bytes: bytes, offsetBytes: offset, arrivalNs: 0, ticket: ticket)
}

/// Dispatches everything the policy lets go at `nowNs`; returns the tickets in order and why it stopped.
private func drain<Policy: SchedulingPolicy>(_ policy: inout Policy, at nowNs: UInt64, limit: Int = 10_000) -> ([Int], PolicyDecision) {
    var tickets: [Int] = []
    while tickets.count < limit {
        let decision = policy.next(nowNs: nowNs)
        guard case .dispatch(let chosen) = decision else { return (tickets, decision) }
        tickets.append(chosen.ticket)
    }
    return (tickets, policy.next(nowNs: nowNs))
}

/// Builds a policy the way `blockdev-add` does, from JSON-like options.
private func make<Policy: SchedulingPolicy>(_ type: Policy.Type, _ options: [String: JSONValue]) throws -> Policy {
    var reader = OptionReader(nodeName: "policy", options: options)
    return try Policy.make(parsing: &reader)
}

// MARK: Policies, exact figures

@Suite struct SchedulingPolicyTests {
    @Test func fifoServesInArrivalOrderWhateverTheTenant() {
        var fifo = FifoPolicy()
        for (ticket, tenant) in [2, 0, 1, 0, 2].enumerated() { fifo.enqueue(request(tenant, ticket), nowNs: 0) }
        let (order, last) = drain(&fifo, at: 0)
        #expect(order == [0, 1, 2, 3, 4])
        #expect(last == .idle)
    }

    @Test func tokenBucketSpendsItsBurstThenRefillsAtItsRate() throws {
        var bucket = try make(TokenBucketPolicy.self, ["tenants": [["iops": 10, "iops-burst": 2]]])
        for ticket in 0..<5 { bucket.enqueue(request(0, ticket), nowNs: 0) }
        // Two tokens at the start, then one every 100 ms.
        var (sent, decision) = drain(&bucket, at: 0)
        #expect(sent == [0, 1])
        #expect(decision == .wait(untilNs: 100 * millisecond))
        (sent, decision) = drain(&bucket, at: 100 * millisecond)
        #expect(sent == [2])
        #expect(decision == .wait(untilNs: 200 * millisecond))
        (sent, _) = drain(&bucket, at: 350 * millisecond)
        // 250 ms more is 2.5 tokens: two requests, half a token left over.
        #expect(sent == [3, 4])
        #expect(bucket.next(nowNs: 350 * millisecond) == .idle)
    }

    @Test func tokenBucketLimitsBytesAndLetsAnOversizedRequestGoFromAFullBucket() throws {
        var bucket = try make(TokenBucketPolicy.self, ["tenants": [["bps": 1_000_000, "bps-burst": 100_000]]])
        bucket.enqueue(request(0, 0, bytes: 250_000), nowNs: 0)
        bucket.enqueue(request(0, 1, bytes: 50_000), nowNs: 0)
        // The big one goes from the full bucket and leaves it 150 KB in debt: the next 50 KB needs 200 ms.
        let (sent, decision) = drain(&bucket, at: 0)
        #expect(sent == [0])
        #expect(decision == .wait(untilNs: 200 * millisecond))
    }

    @Test func leakyBucketFollowsQemusBucketArithmetic() throws {
        // iops-total 10 with QEMU's implicit burst of avg/10 = 1: a request goes while the level is
        // at most the bucket's size, so two go at once, then one per 100 ms as the bucket leaks.
        var leaky = try make(LeakyBucketPolicy.self, ["tenants": [["iops-total": 10], [:]]])
        for ticket in 0..<4 { leaky.enqueue(request(0, ticket), nowNs: 0) }
        leaky.enqueue(request(1, 9), nowNs: 0)
        var (sent, decision) = drain(&leaky, at: 0)
        // The unlimited tenant is never held; the limited one's turn comes round-robin.
        #expect(sent == [0, 9, 1])
        #expect(decision == .wait(untilNs: 100 * millisecond))
        (sent, decision) = drain(&leaky, at: 100 * millisecond)
        #expect(sent == [2])
        #expect(decision == .wait(untilNs: 200 * millisecond))
    }

    @Test func leakyBucketBurstsAtMaxForMaxLengthSeconds() throws {
        // 100 IOPS average, bursts of 1000 IOPS for up to one second, as QEMU's iops-total-max.
        var leaky = try make(LeakyBucketPolicy.self, ["tenants": [["iops-total": 100, "iops-total-max": 1000, "iops-total-max-length": 1]]])
        for ticket in 0..<3000 { leaky.enqueue(request(0, ticket), nowNs: 0) }
        var sent = 0
        var now: UInt64 = 0
        var sentInFirstSecond = 0
        while now <= 3 * second {
            let (tickets, decision) = drain(&leaky, at: now)
            sent += tickets.count
            if now < second { sentInFirstSecond = sent }
            guard case .wait(let until) = decision else { break }
            now = until
        }
        // The burst bucket holds 1000 and leaks 100/s: about 1000 in the first second, then 100 a second.
        #expect((1000...1110).contains(sentInFirstSecond), "sent \(sentInFirstSecond) in the first second")
        #expect((1190...1320).contains(sent), "sent \(sent) in three seconds")
    }

    @Test func mclockSplitsByWeightWithoutReservations() throws {
        var mclock = try make(MClockPolicy.self, ["tenants": [["weight": 1], ["weight": 2]]])
        for ticket in 0..<30 { mclock.enqueue(request(0, ticket), nowNs: 0) }
        for ticket in 100..<130 { mclock.enqueue(request(1, ticket), nowNs: 0) }
        let (sent, _) = drain(&mclock, at: 0, limit: 30)
        // Proportional tags 0, 1, 2 s for weight 1 and 0, 0.5, 1 s for weight 2 (ties to the first tenant).
        #expect(Array(sent.prefix(6)) == [0, 100, 101, 1, 102, 103])
        #expect(sent.filter { $0 >= 100 }.count == 20)
    }

    @Test func mclockServesDueReservationsFirstAndCreditsSpareWork() throws {
        var mclock = try make(MClockPolicy.self, ["tenants": [["reservation": 300, "weight": 1], ["weight": 9]]])
        for ticket in 0..<2000 { mclock.enqueue(request(0, ticket), nowNs: 0) }
        for ticket in 2000..<4000 { mclock.enqueue(request(1, ticket), nowNs: 0) }
        // At t=0 tenant 0's first reservation tag (0) is due: it goes first, in the constraint phase.
        #expect(mclock.next(nowNs: 0) == .dispatch(request(0, 0)))
        // A device that takes 1000 requests a second. By weight tenant 0 would get 100 of them; its
        // reservation gets it 300. The weight phase's service to it moves its reservation tags
        // earlier, so it is not counted twice: 300, not 300 + 10% of the other 700.
        var sentByTenant = [1, 0]
        for step in 1..<1000 {
            if case .dispatch(let chosen) = mclock.next(nowNs: UInt64(step) * millisecond) { sentByTenant[chosen.tenant] += 1 }
        }
        #expect((295...310).contains(sentByTenant[0]), "tenant 0 got \(sentByTenant[0])")
        #expect(sentByTenant[0] + sentByTenant[1] == 1000)
        #expect(mclock.reservationDispatches > 150)
    }

    @Test func mclockHoldsALimitAndSaysWhenToLookAgain() throws {
        var mclock = try make(MClockPolicy.self, ["tenants": [["limit": 10]]])
        for ticket in 0..<3 { mclock.enqueue(request(0, ticket), nowNs: 0) }
        var (sent, decision) = drain(&mclock, at: 0)
        #expect(sent == [0])
        #expect(decision == .wait(untilNs: 100 * millisecond))
        (sent, decision) = drain(&mclock, at: 100 * millisecond)
        #expect(sent == [1])
        #expect(decision == .wait(untilNs: 200 * millisecond))
    }

    @Test func mclockIdleTenantCompetesFromNowNotFromItsOldTags() throws {
        var mclock = try make(MClockPolicy.self, ["tenants": [["weight": 1], ["weight": 1]]])
        // Tenant 0 runs alone for a while: its proportional tags run ahead of real time.
        for ticket in 0..<100 { mclock.enqueue(request(0, ticket), nowNs: 0) }
        _ = drain(&mclock, at: 0, limit: 50)
        // Tenant 1 arrives at t=1 s. Tenant 0's head tag (50 s) is shifted to now, so the two
        // alternate instead of tenant 1 taking the next 49 slots.
        for ticket in 100..<120 { mclock.enqueue(request(1, ticket), nowNs: second) }
        let (sent, _) = drain(&mclock, at: second, limit: 20)
        let tenant1 = sent.filter { $0 >= 100 }.count
        #expect((9...11).contains(tenant1), "tenant 1 got \(tenant1) of 20: \(sent)")
    }

    @Test func deadlinePrefersReadsButBoundsWriteStarvation() {
        var deadline = DeadlinePolicy(fifoBatch: 2, writesStarved: 2)
        // Writes first, then reads, at scattered offsets.
        for ticket in 0..<4 { deadline.enqueue(request(0, 100 + ticket, write: true, offset: UInt64(ticket) << 20), nowNs: 0) }
        for ticket in 0..<8 { deadline.enqueue(request(0, ticket, offset: UInt64(8 - ticket) << 20), nowNs: 0) }
        let (sent, _) = drain(&deadline, at: 0)
        // Two read batches of two (offset order), then writes get a batch, then reads again.
        #expect(sent == [7, 6, 5, 4, 100, 101, 3, 2, 1, 0, 102, 103])
    }

    @Test func deadlineServesAnExpiredRequestFirst() {
        var deadline = DeadlinePolicy(readExpireNs: 10 * millisecond, fifoBatch: 1)
        deadline.enqueue(request(0, 0, offset: 900 << 20), nowNs: 0)
        deadline.enqueue(request(0, 1, offset: 1 << 20), nowNs: 5 * millisecond)
        deadline.enqueue(request(0, 2, offset: 2 << 20), nowNs: 5 * millisecond)
        // Before the deadline the elevator goes in offset order from 0; once ticket 0 expired it goes first.
        #expect(deadline.next(nowNs: 6 * millisecond) == .dispatch(PolicyRequest(tenant: 0, isWrite: false, bytes: 4096, offsetBytes: 1 << 20, arrivalNs: 0, ticket: 1)))
        guard case .dispatch(let next) = deadline.next(nowNs: 11 * millisecond) else { Issue.record("nothing dispatched"); return }
        #expect(next.ticket == 0)
    }

    @Test func weightedFairQueueingSharesBytesByWeight() throws {
        var wfq = try make(WeightedFairPolicy.self, ["tenants": [["weight": 1], ["weight": 3]]])
        for ticket in 0..<100 { wfq.enqueue(request(0, ticket, bytes: 4096), nowNs: 0) }
        // Tenant 1 sends requests twice as large: by bytes it still gets three times tenant 0's share.
        for ticket in 100..<200 { wfq.enqueue(request(1, ticket, bytes: 8192), nowNs: 0) }
        let (sent, _) = drain(&wfq, at: 0, limit: 50)
        let bytes0 = sent.filter { $0 < 100 }.count * 4096
        let bytes1 = sent.filter { $0 >= 100 }.count * 8192
        #expect(abs(Double(bytes1) / Double(bytes0) - 3) < 0.35, "\(bytes1) vs \(bytes0)")
    }

    @Test func badOptionsAreRefusedByName() {
        func failure<Policy: SchedulingPolicy>(_ type: Policy.Type, _ options: [String: JSONValue]) -> String {
            do {
                _ = try make(type, options)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(failure(MClockPolicy.self, [:]) == "policy: Parameter 'tenants' is missing")
        #expect(failure(MClockPolicy.self, ["tenants": []]) == "policy: Parameter 'tenants' must name at least one tenant")
        #expect(failure(MClockPolicy.self, ["tenants": [["reservation": 500, "limit": 100]]])
            == "policy: Parameter 'tenants.0.reservation' must not exceed limit 100, got 500")
        #expect(failure(WeightedFairPolicy.self, ["tenants": [["weight": 1], ["wieght": 2]]]) == "policy: Parameter 'tenants.1.wieght' is unexpected")
        #expect(failure(WeightedFairPolicy.self, ["tenants": [["weight": 0]]]) == "policy: Parameter 'tenants.0.weight' must be between 1 and 1000000, got 0")
        #expect(failure(FifoPolicy.self, ["tenants": [["tag": 3], ["tag": 3]]]) == "policy: Parameter 'tenants.1.tag' tag 3 is used by two tenants")
        #expect(failure(DeadlinePolicy.self, ["tenants": [[:]], "read-expire": 0]) == "policy: Parameter 'read-expire' must be between 1 and 3600000, got 0")
        #expect(failure(FifoPolicy.self, ["tenants": "all"]) == "policy: Parameter 'tenants' expects a list of tenant objects, got a string")
    }
}
