import StrataFilters
import StrataNodes

/// One policy's run of a scenario on simulated time: a discrete-event loop over the tenants'
/// streams, the policy (the very type the filter runs, through the same enqueue/next/completed
/// calls) and the device's service-time model. No threads, clocks or actors: time is the next
/// event's, so the run is the same on every machine, and fast enough for millions of requests.
struct LabSimulation<Policy: SchedulingPolicy> {
    private let scenario: LabScenario
    private var policy: Policy
    private var device: ServiceTimeModel
    private let maxInFlight: Int
    private var streams: [LabRequestStream]
    private var events = LabEventQueue()
    private var pending: [LabRequest?] = []
    private var arrivalNs: [UInt64] = []
    private var freeTickets: [Int] = []
    private var inFlight = 0
    private var queued = 0
    private var timerArmed = false
    private var timerDeadlineNs: UInt64 = 0
    private var timerGeneration = 0
    private(set) var measurements: [LabTenantMeasurements]
    private(set) var eventsHandled: UInt64 = 0

    init(scenario: LabScenario, policy: Policy, maxInFlight: Int, service: ServiceTimeModel.Parameters) {
        self.scenario = scenario
        self.policy = policy
        self.device = ServiceTimeModel(service)
        self.maxInFlight = maxInFlight
        streams = scenario.tenants.enumerated().map { index, tenant in
            LabRequestStream(tenant: tenant, index: index, seed: scenario.seed, deviceSizeBytes: scenario.device.sizeBytes)
        }
        let intervals = Int((scenario.durationNs + scenario.intervalNs - 1) / scenario.intervalNs)
        measurements = scenario.tenants.map { _ in LabTenantMeasurements(intervals: intervals) }
        for (index, tenant) in scenario.tenants.enumerated() {
            if case .closed = tenant.arrival {
                events.schedule(.start, atNs: tenant.startNs, value: index)
            } else if let first = streams[index].nextArrivalNs {
                events.schedule(.arrival, atNs: first, value: index)
            }
        }
    }

    /// Runs to the scenario's end; `progress` hears the simulated time now and then.
    mutating func run(progress: (UInt64) -> Void = { _ in }) {
        let endNs = scenario.durationNs
        while let event = events.pop(), event.timeNs <= endNs {
            eventsHandled += 1
            if eventsHandled & 0xFFFF == 0 { progress(event.timeNs) }
            let now = event.timeNs
            switch event.kind {
            case .start:
                guard case .closed(let depth) = scenario.tenants[event.value].arrival else { preconditionFailure("lab: start of an open loop") }
                for _ in 0..<depth { issue(tenant: event.value, nowNs: now) }
            case .arrival:
                issue(tenant: event.value, nowNs: now)
                streams[event.value].arrived()
                if let next = streams[event.value].nextArrivalNs { events.schedule(.arrival, atNs: next, value: event.value) }
            case .completion:
                complete(ticket: event.value, nowNs: now)
            case .timer:
                guard timerArmed, event.value == timerGeneration else { continue }
                timerArmed = false
            }
            pump(nowNs: now)
        }
        progress(endNs)
    }

    private mutating func issue(tenant: Int, nowNs: UInt64) {
        let request = streams[tenant].nextRequest()
        let ticket: Int
        if let free = freeTickets.popLast() {
            ticket = free
            pending[ticket] = request
            arrivalNs[ticket] = nowNs
        } else {
            ticket = pending.count
            pending.append(request)
            arrivalNs.append(nowNs)
        }
        measurements[tenant].issued += 1
        queued += 1
        policy.enqueue(PolicyRequest(tenant: tenant, isWrite: request.isWrite, bytes: request.bytes,
                                     offsetBytes: request.offsetBytes, arrivalNs: nowNs, ticket: ticket), nowNs: nowNs)
    }

    private mutating func pump(nowNs: UInt64) {
        while inFlight < maxInFlight && queued > 0 {
            switch policy.next(nowNs: nowNs) {
            case .dispatch(let chosen):
                guard let request = pending[chosen.ticket] else { preconditionFailure("lab: policy dispatched an unknown ticket") }
                inFlight += 1
                queued -= 1
                let doneNs = device.completion(isWrite: request.isWrite, bytes: request.bytes, nowNs: nowNs, draw: request.serviceDraw)
                events.schedule(.completion, atNs: doneNs, value: chosen.ticket)
            case .wait(let untilNs):
                precondition(untilNs > nowNs, "\(Policy.driverName): waits until \(untilNs), not after \(nowNs)")
                if !timerArmed || untilNs < timerDeadlineNs {
                    timerArmed = true
                    timerDeadlineNs = untilNs
                    timerGeneration += 1
                    events.schedule(.timer, atNs: untilNs, value: timerGeneration)
                }
                return
            case .idle:
                preconditionFailure("\(Policy.driverName): idle with \(queued) requests queued")
            }
        }
    }

    private mutating func complete(ticket: Int, nowNs: UInt64) {
        guard let request = pending[ticket] else { preconditionFailure("lab: completion of an unknown ticket") }
        let arrival = arrivalNs[ticket]
        pending[ticket] = nil
        freeTickets.append(ticket)
        inFlight -= 1
        policy.completed(PolicyRequest(tenant: request.tenant, isWrite: request.isWrite, bytes: request.bytes,
                                       offsetBytes: request.offsetBytes, arrivalNs: arrival, ticket: ticket), nowNs: nowNs)
        measurements[request.tenant].complete(bytes: request.bytes, latencyNs: nowNs - arrival, atNs: nowNs,
                                              intervalNs: scenario.intervalNs)
        let tenant = scenario.tenants[request.tenant]
        if case .closed = tenant.arrival, nowNs < tenant.stopNs { issue(tenant: request.tenant, nowNs: nowNs) }
    }
}
