import DequeModule
import StrataGraph

/// First come, first served, whoever the tenant: the baseline every other policy is judged against.
public struct FifoPolicy: SchedulingPolicy {
    public struct Tenant: Sendable {}

    public static let driverName = "fifo"
    public static let summary = "first come, first served (the baseline)"

    private var queue = Deque<PolicyRequest>(minimumCapacity: 256)

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant { Tenant() }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {}

    public init() {}

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) { queue.append(request) }

    public mutating func next(nowNs: UInt64) -> PolicyDecision {
        guard let head = queue.popFirst() else { return .idle }
        return .dispatch(head)
    }
}
