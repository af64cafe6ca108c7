import DequeModule
import StrataGraph

/// QEMU's throttling (util/throttle.c's leaky buckets, the `throttle` filter's algorithm) with
/// limits per tenant: each tenant's own buckets (`iops-total`, `bps-total`, `iops-total-max`,
/// `iops-total-max-length`, ... as in QEMU's ThrottleLimits), its requests in arrival order, and
/// tenants whose buckets allow a request served round-robin. Requests wait only for their own
/// tenant's limits; a tenant without limits is never held.
public struct LeakyBucketPolicy: SchedulingPolicy {
    public typealias Tenant = ThrottleLimits

    public static let driverName = "leaky-bucket"
    public static let summary = "QEMU's throttle buckets per tenant (avg, max, max-length), round-robin"

    private var buckets: [ThrottleState]
    private var queues: [Deque<PolicyRequest>]
    private var queued = 0
    /// The tenant served last; the next turn starts after it.
    private var lastServed: Int

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant {
        try ThrottleLimits(parsing: &reader)
    }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {
        self.init(limits: tenants)
    }

    public init(limits: [ThrottleLimits]) {
        buckets = limits.map { ThrottleState(limits: $0, nowNs: 0) }
        queues = limits.map { _ in Deque(minimumCapacity: 64) }
        lastServed = limits.count - 1
    }

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) {
        queues[request.tenant].append(request)
        queued += 1
    }

    public mutating func next(nowNs: UInt64) -> PolicyDecision {
        guard queued > 0 else { return .idle }
        var soonestNs = UInt64.max
        for step in 1...queues.count {
            let tenant = (lastServed + step) % queues.count
            guard let head = queues[tenant].first else { continue }
            let waitNs = buckets[tenant].waitNs(isWrite: head.isWrite, nowNs: nowNs)
            if waitNs > 0 {
                soonestNs = min(soonestNs, nowNs + waitNs)
                continue
            }
            buckets[tenant].account(isWrite: head.isWrite, bytes: UInt64(head.bytes))
            queues[tenant].removeFirst()
            queued -= 1
            lastServed = tenant
            return .dispatch(head)
        }
        return .wait(untilNs: soonestNs)
    }
}
