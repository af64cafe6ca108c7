import StrataGraph

/// A token bucket per tenant: `iops` tokens a second up to `iops-burst` (default a tenth of a
/// second's worth, as QEMU's implicit burst), and the same in bytes with `bps` and `bps-burst`.
/// A request takes one operation token and its size in byte tokens; it may go once each bucket
/// holds what it needs (a request larger than the byte burst goes when that bucket is full and
/// leaves it in debt). Buckets start full. Tenants that may go are served round-robin.
public struct TokenBucketPolicy: SchedulingPolicy {
    public struct Tenant: Sendable, Equatable {
        public var iops: UInt64
        public var iopsBurst: UInt64
        public var bps: UInt64
        public var bpsBurst: UInt64

        public init(iops: UInt64 = 0, iopsBurst: UInt64? = nil, bps: UInt64 = 0, bpsBurst: UInt64? = nil) {
            self.iops = iops
            self.iopsBurst = iopsBurst ?? Swift.max(1, iops / 10)
            self.bps = bps
            self.bpsBurst = bpsBurst ?? Swift.max(1, bps / 10)
        }
    }

    public static let driverName = "token-bucket"
    public static let summary = "token bucket per tenant (iops/bps rate and burst), round-robin"

    private struct Bucket: Sendable {
        let rate: Double
        let capacity: Double
        var tokens: Double
        var lastNs: UInt64 = 0

        init(rate: UInt64, capacity: UInt64) {
            self.rate = Double(rate)
            self.capacity = Double(capacity)
            self.tokens = Double(capacity)
        }

        var isLimited: Bool { rate > 0 }

        mutating func refill(nowNs: UInt64) {
            guard nowNs > lastNs else { return }
            tokens = Swift.min(capacity, tokens + rate * Double(nowNs - lastNs) / nanosecondsPerSecond)
            lastNs = nowNs
        }

        /// Nanoseconds until the bucket holds `cost` (or is full, for a cost above its capacity).
        func waitNs(cost: Double) -> UInt64 {
            guard isLimited else { return 0 }
            let needed = Swift.min(cost, capacity)
            guard tokens < needed else { return 0 }
            return Swift.max(1, UInt64(((needed - tokens) * nanosecondsPerSecond / rate).rounded(.up)))
        }
    }

    /// A tenant's two buckets: one token per request, one per byte.
    private struct Gate: TenantGate {
        var operations: Bucket
        var bytes: Bucket

        mutating func waitNs(for head: PolicyRequest, nowNs: UInt64) -> UInt64 {
            operations.refill(nowNs: nowNs)
            bytes.refill(nowNs: nowNs)
            return Swift.max(operations.waitNs(cost: 1), bytes.waitNs(cost: Double(head.bytes)))
        }

        mutating func charge(_ request: PolicyRequest) {
            if operations.isLimited { operations.tokens -= 1 }
            if bytes.isLimited { bytes.tokens -= Double(request.bytes) }
        }
    }

    private var queues: RoundRobinQueues<Gate>

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant {
        let limit = Int64(1) << 50
        let iops = UInt64(try reader.integer("iops", default: 0, range: 0...limit))
        let iopsBurst = try reader.optionalInteger("iops-burst", range: 1...limit).map(UInt64.init)
        let bps = UInt64(try reader.integer("bps", default: 0, range: 0...limit))
        let bpsBurst = try reader.optionalInteger("bps-burst", range: 1...limit).map(UInt64.init)
        return Tenant(iops: iops, iopsBurst: iopsBurst, bps: bps, bpsBurst: bpsBurst)
    }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {
        self.init(tenants: tenants)
    }

    public init(tenants: [Tenant]) {
        queues = RoundRobinQueues(gates: tenants.map {
            Gate(operations: Bucket(rate: $0.iops, capacity: $0.iopsBurst), bytes: Bucket(rate: $0.bps, capacity: $0.bpsBurst))
        })
    }

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) { queues.enqueue(request) }

    public mutating func next(nowNs: UInt64) -> PolicyDecision { queues.next(nowNs: nowNs) }
}
