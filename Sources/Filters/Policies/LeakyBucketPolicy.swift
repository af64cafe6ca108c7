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

    private var queues: RoundRobinQueues<ThrottleState>

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant {
        try ThrottleLimits(parsing: &reader)
    }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {
        self.init(limits: tenants)
    }

    public init(limits: [ThrottleLimits]) {
        queues = RoundRobinQueues(gates: limits.map { ThrottleState(limits: $0, nowNs: 0) })
    }

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) { queues.enqueue(request) }

    public mutating func next(nowNs: UInt64) -> PolicyDecision { queues.next(nowNs: nowNs) }
}

extension ThrottleState: TenantGate {
    mutating func waitNs(for head: PolicyRequest, nowNs: UInt64) -> UInt64 { waitNs(isWrite: head.isWrite, nowNs: nowNs) }
    mutating func charge(_ request: PolicyRequest) { account(isWrite: request.isWrite, bytes: UInt64(request.bytes)) }
}
