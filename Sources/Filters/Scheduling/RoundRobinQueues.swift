import DequeModule

/// What lets one tenant's requests go in a rate-limiting policy: a bucket, or several.
protocol TenantGate: Sendable {
    /// Nanoseconds until `head` may go; 0 now.
    mutating func waitNs(for head: PolicyRequest, nowNs: UInt64) -> UInt64
    /// `request` went: take what it costs.
    mutating func charge(_ request: PolicyRequest)
}

/// Per-tenant FIFO queues served round-robin among the tenants whose gate is open: the shape of
/// the rate-limiting policies (leaky bucket, token bucket), which differ only in their gates.
struct RoundRobinQueues<Gate: TenantGate>: Sendable {
    private var gates: [Gate]
    private var queues: [Deque<PolicyRequest>]
    private var queued = 0
    /// The tenant served last; the next turn starts after it.
    private var lastServed: Int

    init(gates: [Gate]) {
        precondition(!gates.isEmpty, "a policy has at least one tenant")
        self.gates = gates
        queues = gates.map { _ in Deque(minimumCapacity: 64) }
        lastServed = gates.count - 1
    }

    mutating func enqueue(_ request: PolicyRequest) {
        queues[request.tenant].append(request)
        queued += 1
    }

    /// The first head, in turn after the last tenant served, whose gate is open (and charges it);
    /// else when the soonest gate opens.
    mutating func next(nowNs: UInt64) -> PolicyDecision {
        guard queued > 0 else { return .idle }
        var soonestNs = UInt64.max
        for step in 1...queues.count {
            let tenant = (lastServed + step) % queues.count
            guard let head = queues[tenant].first else { continue }
            let wait = gates[tenant].waitNs(for: head, nowNs: nowNs)
            if wait > 0 {
                soonestNs = min(soonestNs, nowNs + wait)
                continue
            }
            gates[tenant].charge(head)
            queues[tenant].removeFirst()
            queued -= 1
            lastServed = tenant
            return .dispatch(head)
        }
        return .wait(untilNs: soonestNs)
    }
}
