import DequeModule
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

    private struct Bucket {
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

    private var operations: [Bucket]
    private var bytes: [Bucket]
    private var queues: [Deque<PolicyRequest>]
    private var queued = 0
    private var lastServed: Int

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
        operations = tenants.map { Bucket(rate: $0.iops, capacity: $0.iopsBurst) }
        bytes = tenants.map { Bucket(rate: $0.bps, capacity: $0.bpsBurst) }
        queues = tenants.map { _ in Deque(minimumCapacity: 64) }
        lastServed = tenants.count - 1
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
            operations[tenant].refill(nowNs: nowNs)
            bytes[tenant].refill(nowNs: nowNs)
            let waitNs = Swift.max(operations[tenant].waitNs(cost: 1), bytes[tenant].waitNs(cost: Double(head.bytes)))
            if waitNs > 0 {
                soonestNs = Swift.min(soonestNs, nowNs + waitNs)
                continue
            }
            if operations[tenant].isLimited { operations[tenant].tokens -= 1 }
            if bytes[tenant].isLimited { bytes[tenant].tokens -= Double(head.bytes) }
            queues[tenant].removeFirst()
            queued -= 1
            lastServed = tenant
            return .dispatch(head)
        }
        return .wait(untilNs: soonestNs)
    }
}
