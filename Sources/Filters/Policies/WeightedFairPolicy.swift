import DequeModule
import StrataGraph

/// Weighted fair queueing by bytes, as start-time fair queueing (Goyal, Vin, Cheng, SIGCOMM 1996):
/// a request's start tag is the later of the virtual time and its tenant's previous finish tag,
/// its finish tag the start plus its size divided by the tenant's `weight`; the smallest start tag
/// goes next and sets the virtual time. A tenant that idled starts at the virtual time, so it is
/// owed nothing for the time it was away. Work-conserving: spare capacity goes to whoever waits.
public struct WeightedFairPolicy: SchedulingPolicy {
    public struct Tenant: Sendable, Equatable {
        public var weight: UInt64
        public init(weight: UInt64 = 1) { self.weight = weight }
    }

    public static let driverName = "wfq"
    public static let summary = "weighted fair queueing by bytes (start-time fair queueing)"

    private struct Tagged {
        let request: PolicyRequest
        let startTag: Double
    }

    private var weights: [Double]
    private var lastFinish: [Double]
    private var queues: [Deque<Tagged>]
    private var queued = 0
    private var virtualTime = 0.0

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant {
        Tenant(weight: UInt64(try reader.integer("weight", default: 1, range: 1...1_000_000)))
    }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {
        self.init(tenants: tenants)
    }

    public init(tenants: [Tenant]) {
        weights = tenants.map { Double($0.weight) }
        lastFinish = tenants.map { _ in 0 }
        queues = tenants.map { _ in Deque(minimumCapacity: 64) }
    }

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) {
        let tenant = request.tenant
        let start = Swift.max(virtualTime, lastFinish[tenant])
        lastFinish[tenant] = start + Double(Swift.max(request.bytes, 1)) / weights[tenant]
        queues[tenant].append(Tagged(request: request, startTag: start))
        queued += 1
    }

    public mutating func next(nowNs: UInt64) -> PolicyDecision {
        guard queued > 0 else { return .idle }
        var chosen = -1
        var best = Double.infinity
        for index in queues.indices {
            if let head = queues[index].first, head.startTag < best {
                best = head.startTag
                chosen = index
            }
        }
        guard let head = queues[chosen].popFirst() else { preconditionFailure("wfq: chose an empty tenant") }
        queued -= 1
        virtualTime = head.startTag
        return .dispatch(head.request)
    }
}
