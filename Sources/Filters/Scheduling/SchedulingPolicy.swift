import StrataGraph

/// One request as a scheduling policy sees it: whose it is, what it costs, and the ticket its
/// waiter is found by.
public struct PolicyRequest: Sendable, Equatable {
    /// Index of the tenant in the policy's tenant list.
    public var tenant: Int
    public var isWrite: Bool
    public var bytes: Int
    public var offsetBytes: UInt64
    public var arrivalNs: UInt64
    /// Chosen by whoever queues the request; the policy hands it back untouched.
    public var ticket: Int

    public init(tenant: Int, isWrite: Bool, bytes: Int, offsetBytes: UInt64, arrivalNs: UInt64, ticket: Int) {
        self.tenant = tenant
        self.isWrite = isWrite
        self.bytes = bytes
        self.offsetBytes = offsetBytes
        self.arrivalNs = arrivalNs
        self.ticket = ticket
    }
}

/// What a policy answers when the device has room for one more request.
public enum PolicyDecision: Sendable, Equatable {
    /// Send this request to the device now (it leaves the policy's queues).
    case dispatch(PolicyRequest)
    /// Requests wait, but none may go before this time (a limit or a rate holds them).
    case wait(untilNs: UInt64)
    /// Nothing is queued.
    case idle
}

/// A scheduling policy: a pure state machine over queued requests, with no clock, lock or thread of
/// its own. The policy filter runs it under a lock on the queue's clock; the lab runs the same type
/// on simulated time. Time only ever comes in as `nowNs`, which never goes backwards.
///
/// Writing one: a file in Sources/Filters/Policies with a type conforming to this protocol, and one
/// line in `SchedulingPolicyCatalog.policies`. It is then a `blockdev-add` driver (options `file`,
/// `max-in-flight`, `tenants` and its own) and a policy the lab can run.
public protocol SchedulingPolicy: Sendable {
    /// One tenant's options, as its entry in `tenants` gives them.
    associatedtype Tenant: Sendable

    /// The driver name (`blockdev-add` and the lab's `driver`).
    static var driverName: String { get }
    /// One line for `--help` texts and the design notes.
    static var summary: String { get }

    /// Reads one tenant's options; a key it does not read is refused.
    static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant

    /// Reads the policy-wide options (`file`, `max-in-flight` and `tenants` are read already).
    init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError)

    /// A request arrives; `request.tenant` is an index into the tenant list.
    mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64)

    /// The device has room for one request: which one, if any may go now.
    mutating func next(nowNs: UInt64) -> PolicyDecision

    /// A dispatched request completed on the device.
    mutating func completed(_ request: PolicyRequest, nowNs: UInt64)
}

extension SchedulingPolicy {
    public mutating func completed(_ request: PolicyRequest, nowNs: UInt64) {}
}

/// Rates in the policies are per second; tags and deadlines are in nanoseconds.
let nanosecondsPerSecond = 1_000_000_000.0
