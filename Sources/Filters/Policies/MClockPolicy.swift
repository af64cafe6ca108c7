import DequeModule
import StrataGraph

/// mClock (Gulati, Merchant, Varman, "mClock: Handling Throughput Variability for Hypervisor IO
/// Scheduling", OSDI 2010, Algorithm 1): each tenant has a `reservation` (IOPS it is guaranteed,
/// 0 for none), a `weight` (its share of what is left over) and a `limit` (IOPS it never exceeds,
/// 0 for none). Every request gets three tags at arrival, spaced 1/r, 1/l and 1/w apart and never
/// behind real time. A request whose reservation tag is due goes first (earliest tag first);
/// otherwise, among tenants under their limit, the smallest proportional tag goes, and that tenant's
/// pending reservation tags move 1/r earlier so that spare capacity is not charged to its
/// reservation. A tenant that becomes active after idling (nothing queued or in flight for
/// `idle-age-ms`, default 1000) has its proportional tags placed level with the smallest tag of
/// the tenants already active: it competes with them from now on, neither starved by their tags
/// (which run ahead of real time when they get more than their weight in IOPS) nor owed the time
/// it was away. This is the paper's idle-VM adjustment as Ceph's dmClock applies it (the newcomer
/// moves, by `prop_delta`); a tenant whose queue empties between two requests, as a closed loop
/// of depth 1 does each time, is not idle.
///
/// Shifts are kept as one offset per tenant (stored tag = effective tag + offset at storing), so
/// moving every pending tag of a tenant is one addition.
public struct MClockPolicy: SchedulingPolicy {
    public struct Tenant: Sendable, Equatable {
        public var reservation: UInt64
        public var weight: UInt64
        public var limit: UInt64

        public init(reservation: UInt64 = 0, weight: UInt64 = 1, limit: UInt64 = 0) {
            self.reservation = reservation
            self.weight = weight
            self.limit = limit
        }
    }

    public static let driverName = "mclock"
    public static let summary = "mClock: reservation, weight and limit per tenant (Gulati et al., OSDI 2010)"

    private struct Tagged {
        let request: PolicyRequest
        /// Stored forms: subtract the tenant's offset for the effective tag.
        let reservationTag: Double
        let proportionalTag: Double
        let limitTag: Double
    }

    private struct TenantState {
        let reservationSpacing: Double
        let proportionalSpacing: Double
        let limitSpacing: Double
        /// The last request's tags, in stored form.
        var lastReservation = -Double.infinity
        var lastProportional = -Double.infinity
        var lastLimit = -Double.infinity
        var reservationOffset = 0.0
        var proportionalOffset = 0.0
        var queue = Deque<Tagged>(minimumCapacity: 64)
        var inFlight = 0
        /// When the tenant last had a request arrive or complete; nil before its first.
        var lastActivityNs: UInt64?

        init(_ tenant: Tenant) {
            reservationSpacing = tenant.reservation > 0 ? nanosecondsPerSecond / Double(tenant.reservation) : .infinity
            proportionalSpacing = nanosecondsPerSecond / Double(tenant.weight)
            limitSpacing = tenant.limit > 0 ? nanosecondsPerSecond / Double(tenant.limit) : 0
        }

        var hasReservation: Bool { reservationSpacing.isFinite }

        /// The next request's three tags (in stored form), spaced from the last ones and never behind now.
        mutating func tag(_ request: PolicyRequest, now: Double, delta: Double) -> Tagged {
            let reservation = hasReservation ? Swift.max(lastReservation - reservationOffset + reservationSpacing, now) : Double.infinity
            let proportional = Swift.max(lastProportional - proportionalOffset + proportionalSpacing, now) + delta
            let limit = Swift.max(lastLimit + limitSpacing, now)
            let tagged = Tagged(request: request, reservationTag: reservation + reservationOffset,
                                proportionalTag: proportional + proportionalOffset, limitTag: limit)
            lastReservation = tagged.reservationTag
            lastProportional = tagged.proportionalTag
            lastLimit = limit
            return tagged
        }
        func reservation(of tagged: Tagged) -> Double { tagged.reservationTag - reservationOffset }
        func proportional(of tagged: Tagged) -> Double { tagged.proportionalTag - proportionalOffset }
    }

    private var tenants: [TenantState]
    private let idleAgeNs: UInt64
    private var queued = 0
    /// Requests sent in each phase, for the lab's report.
    public private(set) var reservationDispatches: UInt64 = 0
    public private(set) var weightDispatches: UInt64 = 0

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant {
        let limit = Int64(1) << 40
        let reservation = UInt64(try reader.integer("reservation", default: 0, range: 0...limit))
        let weight = UInt64(try reader.integer("weight", default: 1, range: 1...1_000_000))
        let iopsLimit = UInt64(try reader.integer("limit", default: 0, range: 0...limit))
        if iopsLimit > 0 && reservation > iopsLimit {
            throw reader.bad("reservation", "must not exceed limit \(iopsLimit), got \(reservation)")
        }
        return Tenant(reservation: reservation, weight: weight, limit: iopsLimit)
    }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {
        let idleAgeMs = try reader.integer("idle-age-ms", default: 1000, range: 0...86_400_000)
        self.init(tenants: tenants, idleAgeNs: UInt64(idleAgeMs) * 1_000_000)
    }

    public init(tenants: [Tenant], idleAgeNs: UInt64 = 1_000_000_000) {
        self.tenants = tenants.map(TenantState.init)
        self.idleAgeNs = idleAgeNs
    }

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) {
        let now = Double(nowNs)
        let index = request.tenant
        let delta = isIdle(index, nowNs: nowNs) ? proportionalDelta(joining: index, now: now) : 0
        // In place: a copy of the tenant would share its queue's storage, and the append would copy it.
        tenants[index].lastActivityNs = nowNs
        let tagged = tenants[index].tag(request, now: now, delta: delta)
        tenants[index].queue.append(tagged)
        queued += 1
    }

    /// Idle: nothing queued or in flight, and no activity for the idle age (or ever).
    private func isIdle(_ index: Int, nowNs: UInt64) -> Bool {
        let tenant = tenants[index]
        guard tenant.queue.isEmpty && tenant.inFlight == 0 else { return false }
        guard let last = tenant.lastActivityNs else { return true }
        return nowNs - last >= idleAgeNs
    }

    /// How far the active tenants' smallest proportional tag is from now: where a tenant that
    /// joins them is placed. Zero when nobody else is active.
    private func proportionalDelta(joining index: Int, now: Double) -> Double {
        var smallest = Double.infinity
        for other in tenants.indices where other != index {
            if let head = tenants[other].queue.first { smallest = Swift.min(smallest, tenants[other].proportional(of: head)) }
        }
        return smallest.isFinite ? smallest - now : 0
    }

    public mutating func completed(_ request: PolicyRequest, nowNs: UInt64) {
        tenants[request.tenant].inFlight -= 1
        tenants[request.tenant].lastActivityNs = nowNs
    }

    public mutating func next(nowNs: UInt64) -> PolicyDecision {
        guard queued > 0 else { return .idle }
        let now = Double(nowNs)
        // Constraint phase: the earliest reservation tag that is due.
        var chosen: Int?
        var best = Double.infinity
        for index in tenants.indices {
            guard let head = tenants[index].queue.first else { continue }
            let tag = tenants[index].reservation(of: head)
            if tag <= now && tag < best {
                best = tag
                chosen = index
            }
        }
        if let chosen {
            reservationDispatches &+= 1
            return dispatch(from: chosen)
        }
        // Weight phase: the smallest proportional tag among tenants under their limit.
        best = .infinity
        var soonest = Double.infinity
        for index in tenants.indices {
            guard let head = tenants[index].queue.first else { continue }
            soonest = Swift.min(soonest, tenants[index].reservation(of: head))
            guard head.limitTag <= now else {
                soonest = Swift.min(soonest, head.limitTag)
                continue
            }
            let tag = tenants[index].proportional(of: head)
            if tag < best {
                best = tag
                chosen = index
            }
        }
        guard let chosen else {
            precondition(soonest.isFinite && soonest > now, "mclock: requests queued but none can ever go")
            return .wait(untilNs: UInt64(soonest.rounded(.up)))
        }
        weightDispatches &+= 1
        if tenants[chosen].hasReservation { tenants[chosen].reservationOffset += tenants[chosen].reservationSpacing }
        return dispatch(from: chosen)
    }

    private mutating func dispatch(from index: Int) -> PolicyDecision {
        guard let head = tenants[index].queue.popFirst() else { preconditionFailure("mclock: chose an empty tenant") }
        tenants[index].inFlight += 1
        queued -= 1
        return .dispatch(head.request)
    }
}
