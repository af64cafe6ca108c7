import StrataFilters
import StrataGraph
import StrataRuntime
import Synchronization
import Testing

// MARK: Harness

/// Yields until `condition` holds. Other tasks run in between; no real time passes.
private func waitUntil(_ what: String = #function, _ condition: () -> Bool) async {
    for _ in 0..<5_000_000 {
        if condition() { return }
        await Task.yield()
    }
    Issue.record("gave up waiting: \(what)")
}

private func limits(_ configure: (inout ThrottleLimits) -> Void) -> ThrottleLimits {
    var limits = ThrottleLimits()
    configure(&limits)
    return limits
}

private let second: UInt64 = 1_000_000_000
private let millisecond: UInt64 = 1_000_000

/// Drives one throttle group on a virtual clock. Requests arrive one at a time in call order, and
/// time moves only once every released request has logged when it got through, so the logged
/// times are the admission times.
private final class AdmissionDriver: Sendable {
    struct Admission: Sendable {
        let request: Int
        let member: Int
        let isWrite: Bool
        let ns: UInt64
    }

    let clock = VirtualClock()
    let group: ThrottleGroup
    private let log = Locked<[Admission]>([])

    init(_ limits: ThrottleLimits) {
        group = ThrottleGroup(name: "test", limits: limits, clock: clock)
    }

    var admissions: [Admission] { log.withLock { $0 } }
    var logged: Int { log.withLock { $0.count } }
    var lastNs: UInt64 { log.withLock { $0.map(\.ns).max() ?? 0 } }

    func member() -> ThrottleGroup.Member {
        guard let member = group.register() else { preconditionFailure("fresh group is retired") }
        return member
    }

    /// Starts a request and returns once the group has admitted or queued it.
    func submit(_ request: Int, member: ThrottleGroup.Member, memberIndex: Int = 0, isWrite: Bool = false, bytes: Int = 4096) async {
        let before = logged + group.queuedRequests
        Task {
            await group.admit(member: member, isWrite: isWrite, bytes: bytes, clock: clock)
            log.withLock { $0.append(Admission(request: request, member: memberIndex, isWrite: isWrite, ns: clock.nowNs)) }
        }
        await waitUntil { logged + group.queuedRequests == before + 1 }
    }

    /// Advances to each of the group's timer deadlines in turn until `total` requests got through,
    /// or until the next deadline lies past `stopNs`.
    func run(until total: Int, stopNs: UInt64 = .max) async {
        while true {
            // Settled when no armed timer is due (a due one has not looked at the queues yet) and
            // everything released has logged. The group's deadlines, not the clock's, say where to
            // go: timers superseded by setLimits still sleep on the clock but do nothing.
            var next: UInt64?
            await waitUntil {
                next = group.nextReleaseNs
                if let next, next <= clock.nowNs { return false }
                return logged == Int(group.statistics.admitted)
            }
            guard logged < total, let next, next <= stopNs else { return }
            clock.advance(toNs: next)
        }
    }
}

// MARK: Fake child for the filter tests

/// What the filtered child saw, readable without awaiting the child's actor.
private final class ChildLog: Sendable {
    let entries = Locked<[(operation: BlockOperation, offset: UInt64, ns: UInt64)]>([])
    var count: Int { entries.withLock { $0.count } }
}

private actor RecordingNode: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let log: ChildLog
    private let clock: any IOClock

    init(queue: QueueContext, log: ChildLog) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.log = log
        self.clock = queue.clock
    }

    func submit(_ request: BlockRequest) async -> IOStatus {
        log.entries.withLock { $0.append((request.operation, request.offsetBytes, clock.nowNs)) }
        return .ok
    }
}

/// Calls into a filter instance from an actor on the same queue, as a device queue would: the call
/// runs inline, ahead of jobs already queued on the executor.
private actor QueueUser {
    nonisolated let unownedExecutor: UnownedSerialExecutor

    init(executor: QueueExecutor) { unownedExecutor = executor.asUnownedSerialExecutor() }

    func liftLimitsAndSubmit(_ group: ThrottleGroup, _ request: BlockRequest, to instance: any BlockNode) async -> IOStatus {
        group.setLimits(.unlimited)
        return await instance.submit(request)
    }
}

private final class RecordingState: NodeState {
    let log = ChildLog()
    var sizeBytes: UInt64 { 1 << 30 }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        RecordingNode(queue: queue, log: log)
    }
}

private func parse(_ node: String, _ json: String) throws -> any NodeConfiguration {
    guard let options = try JSONValue.parse(json).objectValue else { throw GraphError.badJSON(json) }
    var reader = OptionReader(nodeName: node, options: options)
    return try ThrottleFilter.descriptor.parse(&reader)
}

struct ValidationCase: Sendable, CustomTestStringConvertible {
    let json: String
    let message: String
    var testDescription: String { json }
}

private let validationCases: [ValidationCase] = [
    .init(json: #"{"file": "f", "limits": {"iops-total": -1}}"#,
          message: "t0: Parameter 'limits.iops-total' must be between 0 and 1000000000000000, got -1"),
    .init(json: #"{"file": "f", "limits": {"bps-read": 2000000000000000}}"#,
          message: "t0: Parameter 'limits.bps-read' must be between 0 and 1000000000000000, got 2000000000000000"),
    .init(json: #"{"file": "f", "limits": {"bps-write-max": "-5"}}"#,
          message: "t0: Parameter 'limits.bps-write-max' must be between 0 and 1000000000000000, got -5"),
    .init(json: #"{"file": "f", "limits": {"iops-total": 100, "iops-read": 50}}"#,
          message: "t0: Parameter 'limits.iops-total' cannot be used at the same time as 'limits.iops-read': total and read/write values exclude each other"),
    .init(json: #"{"file": "f", "limits": {"bps-total": 100, "bps-write": 50}}"#,
          message: "t0: Parameter 'limits.bps-total' cannot be used at the same time as 'limits.bps-write': total and read/write values exclude each other"),
    .init(json: #"{"file": "f", "limits": {"bps-total": 10, "bps-total-max": 100, "bps-write-max": 100}}"#,
          message: "t0: Parameter 'limits.bps-total-max' cannot be used at the same time as 'limits.bps-write-max': total and read/write values exclude each other"),
    .init(json: #"{"file": "f", "limits": {"iops-write": 100, "iops-write-max": 50}}"#,
          message: "t0: Parameter 'limits.iops-write-max' cannot be lower than 'limits.iops-write' (100), got 50"),
    .init(json: #"{"file": "f", "limits": {"bps-total-max": 100}}"#,
          message: "t0: Parameter 'limits.bps-total-max' requires 'limits.bps-total' to be set"),
    .init(json: #"{"file": "f", "limits": {"iops-read": 10, "iops-read-max-length": 5}}"#,
          message: "t0: Parameter 'limits.iops-read-max-length' requires 'limits.iops-read-max' to be set (burst length set without burst rate)"),
    .init(json: #"{"file": "f", "limits": {"iops-read": 10, "iops-read-max": 20, "iops-read-max-length": 0}}"#,
          message: "t0: Parameter 'limits.iops-read-max-length' must be between 1 and 86400, got 0"),
    .init(json: #"{"file": "f", "limits": {"iops-read": 10, "iops-read-max": 20, "iops-read-max-length": 86401}}"#,
          message: "t0: Parameter 'limits.iops-read-max-length' must be between 1 and 86400, got 86401"),
    .init(json: #"{"file": "f", "limits": {"bps-total": 1000000000000000, "bps-total-max": 1000000000000000, "bps-total-max-length": 2}}"#,
          message: "t0: Parameter 'limits.bps-total-max-length' is too high for this burst rate: bps-total-max * bps-total-max-length must not exceed 1000000000000000"),
    .init(json: #"{"file": "f", "limits": {"iops-total": 1.5}}"#,
          message: "t0: Parameter 'limits.iops-total' must be an integer, got 1.5"),
    .init(json: #"{"file": "f", "limits": {"iops-total": "fast"}}"#,
          message: "t0: Parameter 'limits.iops-total' must be an integer, got 'fast'"),
    .init(json: #"{"file": "f", "limits": {"iops-total": true}}"#,
          message: "t0: Parameter 'limits.iops-total' must be an integer, got a boolean"),
    .init(json: #"{"file": "f", "limits": {"bps-total": 100, "iops-size": 4096}}"#,
          message: "t0: Parameter 'limits.iops-size' requires an iops value to be set ('limits.iops-total', 'limits.iops-read' or 'limits.iops-write')"),
    .init(json: #"{"file": "f", "limits": {"iops": 5}}"#,
          message: "t0: Parameter 'limits.iops' is unexpected"),
    .init(json: #"{"file": "f", "limits": 5}"#,
          message: "t0: Parameter 'limits' expects an object, got a number"),
    .init(json: ##"{"file": "f", "throttle-group": "#g"}"##,
          message: "t0: Parameter 'throttle-group' must start with a letter and contain only letters, digits, '-', '.' and '_', got '#g'"),
    .init(json: #"{"file": "f", "group": "g"}"#,
          message: "t0: Parameter 'group' is unexpected"),
    .init(json: #"{"limits": {"iops-total": 5}}"#,
          message: "t0: Parameter 'file' is missing"),
]

// MARK: Tests

@Suite struct ThrottleTests {
    @Test func iopsTotalHoldsTheRate() async {
        let driver = AdmissionDriver(limits { $0[.iopsTotal].avg = 100 })
        let member = driver.member()
        for index in 0..<1000 { await driver.submit(index, member: member) }
        await driver.run(until: 1000)
        let times = driver.admissions.sorted { $0.request < $1.request }.map(\.ns)
        // QEMU lets a tenth of a second's worth (10, plus the one that fills it) through at once,
        // then one every 10 ms: the 1000th goes at 9.89 s.
        #expect(times.prefix(11).allSatisfy { $0 == 0 })
        #expect(times[11] >= 10 * millisecond && times[11] < 10 * millisecond + 10)
        #expect(driver.lastNs >= 9_890 * millisecond && driver.lastNs < 9_891 * millisecond)
        let statistics = driver.group.statistics
        #expect(statistics.admitted == 1000 && statistics.throttled == 989)
        #expect(driver.group.queuedRequests == 0)
    }

    @Test func bpsReadHoldsTheRateAndLeavesWritesAlone() async {
        let driver = AdmissionDriver(limits { $0[.bpsRead].avg = 1 << 20 })
        let member = driver.member()
        for index in 0..<160 { await driver.submit(index, member: member, bytes: 65536) }
        // Reads queue, but bps-read does not apply to writes.
        await driver.submit(1000, member: member, isWrite: true, bytes: 1 << 30)
        #expect(driver.admissions.contains { $0.request == 1000 && $0.ns == 0 })
        await driver.run(until: 161)
        // Two 64 KiB reads fit the 0.1 s allowance; the third waits for 25.6 KiB to leak (25 ms), and
        // each further one 62.5 ms: 10 MiB in 25 ms + 157 * 62.5 ms = 9.8375 s.
        #expect(driver.lastNs >= 9_837 * millisecond && driver.lastNs <= 9_838 * millisecond)
        let reads = driver.admissions.filter { !$0.isWrite }.sorted { $0.request < $1.request }
        let rate = Double(157 * 65536) / (Double(reads[159].ns - reads[2].ns) / 1e9)
        #expect(abs(rate - Double(1 << 20)) / Double(1 << 20) < 0.001)
    }

    @Test func burstGoesThroughAtOnceThenTheAverage() async {
        let driver = AdmissionDriver(limits { $0[.iopsTotal] = .init(avg: 100, max: 1000) })
        let member = driver.member()
        for index in 0..<1200 { await driver.submit(index, member: member) }
        // An idle bucket holds max * max-length = 1000 operations (plus the one that fills it).
        #expect(driver.logged == 1001)
        await driver.run(until: 1200)
        let late = driver.admissions.filter { $0.ns > 0 }.map(\.ns).sorted()
        #expect(late.count == 199)
        #expect(late.first == 10 * millisecond)
        #expect(driver.lastNs >= 1_990 * millisecond && driver.lastNs < 1_991 * millisecond)
    }

    @Test func longBurstIsHeldToMaxThenToTheAverage() async {
        let driver = AdmissionDriver(limits { $0[.iopsWrite] = .init(avg: 100, max: 500, maxLength: 4) })
        let member = driver.member()
        for index in 0..<3000 { await driver.submit(index, member: member, isWrite: true) }
        // A burst longer than a second runs at max: 50 (a tenth of a second at max) and one more at once...
        #expect(driver.logged == 51)
        await driver.run(until: 3000)
        let times = driver.admissions.map(\.ns)
        func admitted(from start: UInt64, to end: UInt64) -> Int { times.filter { $0 >= start && $0 < end }.count }
        // ...then 500/s until the bucket holds max * max-length = 2000 (at 51 + 400 t = 2000, t = 4.87 s)...
        #expect(abs(admitted(from: 1 * second, to: 4 * second) - 1500) <= 1)
        // ...then the average, 100/s.
        #expect(abs(admitted(from: 6 * second, to: 9 * second) - 300) <= 1)
        // 2487 by the end of the burst, the other 513 at 100/s.
        #expect(driver.lastNs >= 9_990 * millisecond && driver.lastNs <= 10_010 * millisecond)
    }

    @Test func iopsSizeCountsLargeRequestsAsSeveral() async {
        let driver = AdmissionDriver(limits {
            $0[.iopsTotal].avg = 100
            $0.iopsSize = 4096
        })
        let member = driver.member()
        for index in 0..<200 { await driver.submit(index, member: member, bytes: 16384) }
        await driver.run(until: 200)
        // 16 KiB is four 4 KiB operations: 25 requests a second. Three fit the allowance of 10, the
        // fourth waits 20 ms, then one every 40 ms: 20 ms + 196 * 40 ms = 7.86 s.
        #expect(driver.lastNs >= 7_860 * millisecond && driver.lastNs < 7_861 * millisecond)

        // Requests no larger than iops-size count as one.
        let small = AdmissionDriver(driver.group.limits)
        let smallMember = small.member()
        for index in 0..<200 { await small.submit(index, member: smallMember, bytes: 512) }
        await small.run(until: 200)
        #expect(small.lastNs >= 1_890 * millisecond && small.lastNs < 1_891 * millisecond)
    }

    @Test func groupMembersShareTheLimitRoundRobin() async {
        let driver = AdmissionDriver(limits { $0[.iopsTotal].avg = 100 })
        let members = [driver.member(), driver.member()]
        for index in 0..<800 { await driver.submit(index, member: members[index % 2], memberIndex: index % 2) }
        await driver.run(until: 800)
        // Combined, the limit: 800 requests, 11 at once then 10 ms each.
        #expect(driver.lastNs >= 7_890 * millisecond && driver.lastNs < 7_891 * millisecond)
        // Each busy member gets half, all along.
        let order = driver.admissions.sorted { ($0.ns, $0.request) < ($1.ns, $1.request) }
        for prefix in stride(from: 100, through: 800, by: 100) {
            let first = order.prefix(prefix).filter { $0.member == 0 }.count
            #expect(abs(first - prefix / 2) <= 1, "member 0 got \(first) of the first \(prefix)")
        }
        for (index, member) in members.enumerated() {
            #expect(driver.group.statistics(for: member)?.admitted == 400, "member \(index)")
        }
    }

    @Test func busyMemberCannotStarveAnother() async {
        let driver = AdmissionDriver(limits { $0[.iopsTotal].avg = 100 })
        let busy = driver.member()
        let quiet = driver.member()
        for index in 0..<500 { await driver.submit(index, member: busy) }
        await driver.run(until: 500, stopNs: 1 * second)
        let arrivalNs = driver.clock.nowNs
        for index in 500..<510 { await driver.submit(index, member: quiet, memberIndex: 1) }
        await driver.run(until: 510)
        // Turns alternate: the quiet member's 10 requests go within 20 turns (200 ms), not after
        // the ~390 the busy member still has queued.
        let quietLast = driver.admissions.filter { $0.member == 1 }.map(\.ns).max() ?? .max
        #expect(quietLast - arrivalNs <= 200 * millisecond)
        #expect(driver.lastNs >= 4_990 * millisecond && driver.lastNs < 4_991 * millisecond)
    }

    @Test func changingLimitsKeepsQueuedRequestsInOrder() async {
        let driver = AdmissionDriver(limits { $0[.iopsTotal].avg = 1 })
        let member = driver.member()
        for index in 0..<40 { await driver.submit(index, member: member, isWrite: index % 3 == 0) }
        // 1 iops with a 0.1 allowance: admitted at 0, 0.9 s and 1.9 s; the timer sleeps until 2.9 s.
        await driver.run(until: 40, stopNs: 2_500 * millisecond)
        #expect(driver.logged == 3 && driver.group.nextReleaseNs == 2_900 * millisecond)
        let raiseNs = 2_500 * millisecond
        driver.clock.advance(toNs: raiseNs)

        // Raised while that timer sleeps: the queue is re-evaluated now, with empty buckets (two fit
        // the allowance of 1), and a timer for 2.6 s replaces the one for 2.9 s.
        driver.group.setLimits(limits { $0[.iopsTotal].avg = 10 })
        await waitUntil { driver.logged == Int(driver.group.statistics.admitted) }
        #expect(driver.logged == 5)
        #expect(driver.admissions.filter { $0.ns == raiseNs }.count == 2)
        #expect(driver.group.nextReleaseNs == raiseNs + 100 * millisecond)
        await driver.run(until: 40, stopNs: raiseNs + 550 * millisecond)
        #expect(driver.logged == 10)

        // Lowered: one fits the new allowance at once, then one every 0.5 s (after 0.4 s for the first).
        let lowerNs = driver.clock.nowNs
        driver.group.setLimits(limits { $0[.iopsTotal].avg = 2 })
        await driver.run(until: 40, stopNs: lowerNs + 1_000 * millisecond)
        #expect(driver.logged == 13)

        // Removed: everything still queued goes at once, in order, none lost.
        driver.group.setLimits(.unlimited)
        await driver.run(until: 40)
        #expect(driver.logged == 40)
        #expect(!driver.group.isEnabled && driver.group.queuedRequests == 0)

        let admissions = driver.admissions.sorted { ($0.ns, $0.request) < ($1.ns, $1.request) }
        for isWrite in [false, true] {
            let requests = admissions.filter { $0.isWrite == isWrite }.map(\.request)
            #expect(requests == requests.sorted(), "order kept for \(isWrite ? "writes" : "reads")")
        }
        #expect(Set(admissions.map(\.request)) == Set(0..<40))
        // Timers superseded on the way still sleep; they wake to nothing.
        #expect(driver.group.nextReleaseNs == nil && driver.clock.sleeperCount > 0)
        while let stale = driver.clock.nextDeadlineNs { driver.clock.advance(toNs: stale) }
        for _ in 0..<100 { await Task.yield() }
        #expect(driver.group.statistics.admitted == 40 && driver.logged == 40)
    }

    @Test func unlimitedGroupAdmitsWithoutTouchingTheBuckets() async {
        let driver = AdmissionDriver(.unlimited)
        let member = driver.member()
        for _ in 0..<1000 { await driver.group.admit(member: member, isWrite: true, bytes: 1 << 20, clock: driver.clock) }
        // Nothing was counted: the fast path skipped the lock.
        #expect(driver.group.statistics == ThrottleGroup.Statistics())
        #expect(driver.clock.sleeperCount == 0)
    }

    @Test func limitsParseQEMUKeys() throws {
        var reader = OptionReader(nodeName: "t0", options: [
            "bps-total": .string("1M"), "bps-total-max": .int(4 << 20), "bps-total-max-length": .int(10),
            "iops-read": .double(200), "iops-write": .string("300"), "iops-write-max": .int(600), "iops-size": .int(8192),
        ])
        let parsed = try ThrottleLimits(parsing: &reader)
        try reader.finish()
        #expect(parsed[.bpsTotal] == .init(avg: 1 << 20, max: 4 << 20, maxLength: 10))
        #expect(parsed[.iopsRead] == .init(avg: 200))
        #expect(parsed[.iopsWrite] == .init(avg: 300, max: 600, maxLength: 1))
        #expect(parsed[.bpsRead] == .init() && parsed[.iopsTotal] == .init())
        #expect(parsed.iopsSize == 8192 && parsed.isEnabled)
        #expect(!ThrottleLimits.unlimited.isEnabled)
    }

    @Test(arguments: validationCases)
    func optionsAreValidatedAsQEMU(_ validation: ValidationCase) throws {
        do {
            _ = try parse("t0", validation.json)
            Issue.record("accepted \(validation.json)")
        } catch let error as GraphError {
            #expect(error.description == validation.message)
        }
    }

    @Test func filterThrottlesThroughItsGroup() async throws {
        let executor = try QueueExecutor(name: "throttle-q0")
        defer { executor.shutdown() }
        let clock = VirtualClock()
        let shared = SharedObjects()
        let context = OpenContext(controlExecutor: executor, clock: clock, sharedObjects: shared)
        let queue = QueueContext(index: 0, executor: executor, clock: clock)
        let fileLink = ChildLink(role: .filtered, optionKey: "file", nodeName: "f")
        let child = RecordingState()

        #expect(ThrottleFilter.descriptor.name == "throttle" && ThrottleFilter.descriptor.isFilter)
        let first = try parse("t0", #"{"file": "f", "throttle-group": "g", "limits": {"iops-total": 10}}"#)
        #expect(first.children == [fileLink])
        let state0 = try await first.open(name: "t0", children: [fileLink: child], context: context)
        let groupName = ThrottleFilter.sharedObjectName(group: "g")
        let group = try #require(shared.existing(named: groupName, as: ThrottleGroup.self))
        #expect(group.limits[.iopsTotal].avg == 10 && state0.sizeBytes == 1 << 30)

        // A second node naming the group joins it; its limits replace the group's.
        let second = try parse("t1", #"{"file": "f", "throttle-group": "g", "limits": {"iops-total": 20}}"#)
        let state1 = try await second.open(name: "t1", children: [fileLink: child], context: context)
        #expect(group.memberCount == 2 && group.limits[.iopsTotal].avg == 20)

        // Without a group name, a node gets a private group of its own.
        let alone = try parse("t2", #"{"file": "f"}"#)
        let state2 = try await alone.open(name: "t2", children: [fileLink: child], context: context)
        let privateGroup = try #require(shared.existing(named: ThrottleFilter.sharedObjectName(group: "#t2"), as: ThrottleGroup.self))
        #expect(!privateGroup.isEnabled && privateGroup.memberCount == 1)

        let instance = state0.makeInstance(queue: queue, children: [fileLink: NodeHandle(child.makeInstance(queue: queue, children: [:]))])
        // Flushes are not throttled.
        for _ in 0..<50 { #expect(await instance.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0)) == .ok) }
        #expect(group.statistics.admitted == 0 && child.log.count == 50)

        // Reads, writes, write-zeroes and discards are: 20 iops with 3 at once, then one per 50 ms.
        let operations: [BlockOperation] = [.read, .write, .writeZeroes, .discard]
        for index in 0..<23 {
            let request = BlockRequest(operation: operations[index % 4], offsetBytes: UInt64(index) * 4096, lengthBytes: 4096)
            Task { _ = await instance.submit(request) }
        }
        while true {
            var next: UInt64?
            await waitUntil {
                next = group.nextReleaseNs
                if let next, next <= clock.nowNs { return false }
                // Time may move only once all 23 reached the group, so which wait is fixed.
                let admitted = Int(group.statistics.admitted)
                guard admitted + group.queuedRequests == 23 else { return false }
                return child.log.count == 50 + admitted && (next != nil || child.log.count == 73)
            }
            guard child.log.count < 73, let next else { break }
            clock.advance(toNs: next)
        }
        #expect(group.statistics.admitted == 23 && group.statistics.throttled == 20)
        let lastNs = child.log.entries.withLock { $0.map(\.ns).max() ?? 0 }
        #expect(lastNs >= 1_000 * millisecond && lastNs < 1_001 * millisecond)

        // Requests the group has let go but that have not run yet still count as queued: a newcomer
        // of the same member, even one that finds no limits left, goes after them.
        let third = try parse("t3", #"{"file": "f", "limits": {"iops-total": 1}}"#)
        let state3 = try await third.open(name: "t3", children: [fileLink: child], context: context)
        let group3 = try #require(shared.existing(named: ThrottleFilter.sharedObjectName(group: "#t3"), as: ThrottleGroup.self))
        let instance3 = state3.makeInstance(queue: queue, children: [fileLink: NodeHandle(child.makeInstance(queue: queue, children: [:]))])
        let before = child.log.count
        for index in 0..<10 {
            // Started in order on the queue; each runs until it is admitted or queued.
            let request = BlockRequest(operation: .read, offsetBytes: UInt64(index), lengthBytes: 512)
            Task(executorPreference: executor) { _ = await instance3.submit(request) }
        }
        await waitUntil { group3.queuedRequests == 9 && child.log.count == before + 1 }
        let user = QueueUser(executor: executor)
        let late = BlockRequest(operation: .read, offsetBytes: 10, lengthBytes: 512)
        #expect(await user.liftLimitsAndSubmit(group3, late, to: instance3) == .ok)
        await waitUntil { child.log.count == before + 11 }
        let offsets = child.log.entries.withLock { $0.suffix(11).map(\.offset) }
        #expect(offsets == Array(0...10))
        await state3.close()

        // Reopen: new limits apply at commit; the group and the child cannot change.
        let commit = try state0.prepareReopen(try parse("t0", #"{"file": "f", "throttle-group": "g", "limits": {"bps-total": 4096}}"#))
        #expect(group.limits[.iopsTotal].avg == 20)
        commit()
        #expect(group.limits[.bpsTotal].avg == 4096 && group.limits[.iopsTotal].avg == 0)
        #expect(throws: GraphError.badEdit("Node 't0': cannot change option 'throttle-group' on reopen")) {
            _ = try state0.prepareReopen(try parse("t0", #"{"file": "f", "throttle-group": "h"}"#))
        }
        #expect(throws: GraphError.badEdit("Node 't0': cannot change option 'file' of a throttle node on reopen")) {
            _ = try state0.prepareReopen(try parse("t0", #"{"file": "other", "throttle-group": "g"}"#))
        }

        // The last member to close removes the group.
        await state0.close()
        #expect(shared.existing(named: groupName, as: ThrottleGroup.self) != nil && group.memberCount == 1)
        await state1.close()
        #expect(shared.existing(named: groupName, as: ThrottleGroup.self) == nil)
        await state2.close()
        #expect(shared.existing(named: ThrottleFilter.sharedObjectName(group: "#t2"), as: ThrottleGroup.self) == nil)
    }
}
