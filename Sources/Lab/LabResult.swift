/// One tenant's figures under one policy.
public struct LabTenantResult: Sendable, Equatable {
    public let tenant: String
    public let completed: UInt64
    public let iops: Double
    public let mibPerSecond: Double
    public let meanUs: Double
    public let p50Us: Double
    public let p99Us: Double
    public let p999Us: Double
    public let maxUs: Double
    /// Nil when the tenant was promised nothing.
    public let reservationMet: Bool?
    /// Nil when the tenant has no limit.
    public let limitExceeded: Bool?
    /// Its part of the throughput beyond all reservations; nil when there was none.
    public let spareShare: Double?
    /// Completions per second in each interval.
    public let timeline: [Double]
    /// (latency in microseconds, fraction of requests at or below it), for the CDF plot.
    public let cdf: [(Double, Double)]

    public static func == (lhs: LabTenantResult, rhs: LabTenantResult) -> Bool {
        lhs.tenant == rhs.tenant && lhs.completed == rhs.completed && lhs.iops == rhs.iops && lhs.p99Us == rhs.p99Us
            && lhs.p999Us == rhs.p999Us && lhs.timeline == rhs.timeline
    }
}

/// One policy's run of the scenario.
public struct LabPolicyResult: Sendable, Equatable {
    public let policy: String
    public let driver: String
    public let maxInFlight: Int
    public let tenants: [LabTenantResult]
    /// Every tenant's completions over the scenario's whole duration.
    public let totalIops: Double
    /// Jain's fairness index over the tenants' IOPS divided by their weights: 1 when every tenant
    /// got exactly its weighted share, 1/n when one got everything.
    public let jainIndex: Double
    public let eventsHandled: UInt64
    public let wallSeconds: Double

    public static func == (lhs: LabPolicyResult, rhs: LabPolicyResult) -> Bool {
        lhs.policy == rhs.policy && lhs.tenants == rhs.tenants && lhs.totalIops == rhs.totalIops && lhs.jainIndex == rhs.jainIndex
    }
}

/// A whole lab run: every policy on the same streams.
public struct LabResult: Sendable, Equatable {
    public let scenario: String
    public let seed: UInt64
    public let clock: LabScenario.Clock
    public let durationSeconds: Double
    public let intervalSeconds: Double
    public let policies: [LabPolicyResult]

    public func policy(_ name: String) -> LabPolicyResult? { policies.first { $0.policy == name } }
}

extension LabPolicyResult {
    public func tenant(_ name: String) -> LabTenantResult? { tenants.first { $0.tenant == name } }
}

/// How the figures are judged.
enum LabVerdict {
    /// A reservation counts as met at 95% of what was promised (or of what the tenant asked for,
    /// if less): rates are measured over whole runs, and arrivals are random.
    static let reservationTolerance = 0.95
    /// A limit counts as exceeded above 105%.
    static let limitTolerance = 1.05

    static let cdfPercentiles: [Double] = [0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.99, 100]

    static func summarize(policy: LabPolicy, scenario: LabScenario, measurements: [LabTenantMeasurements],
                          eventsHandled: UInt64, wallSeconds: Double) -> LabPolicyResult {
        let endNs = scenario.durationNs
        let iops = zip(scenario.tenants, measurements).map { tenant, measured -> Double in
            let activeNs = min(tenant.stopNs, endNs) - tenant.startNs
            return Double(measured.completed) / (Double(activeNs) / 1e9)
        }
        let spare = zip(scenario.tenants, iops).map { tenant, rate in max(0, rate - Double(tenant.reservation)) }
        let spareTotal = spare.reduce(0, +)
        var tenants: [LabTenantResult] = []
        for (index, tenant) in scenario.tenants.enumerated() {
            let measured = measurements[index]
            let activeSeconds = Double(min(tenant.stopNs, endNs) - tenant.startNs) / 1e9
            let histogram = measured.latency
            let hasData = histogram.totalCount > 0
            func us(_ value: UInt64) -> Double { hasData ? Double(value) / 1000 : 0 }
            let offered = Self.offeredIops(tenant)
            let reservationMet: Bool? = tenant.reservation == 0 ? nil
                : iops[index] >= reservationTolerance * min(Double(tenant.reservation), offered)
            let limitExceeded: Bool? = tenant.limit == 0 ? nil : iops[index] > limitTolerance * Double(tenant.limit)
            let intervalSeconds = Double(scenario.intervalNs) / 1e9
            tenants.append(LabTenantResult(
                tenant: tenant.name, completed: measured.completed, iops: iops[index],
                mibPerSecond: Double(measured.completedBytes) / activeSeconds / 1_048_576,
                meanUs: hasData ? histogram.mean / 1000 : 0,
                p50Us: us(histogram.valueAtPercentile(50)), p99Us: us(histogram.valueAtPercentile(99)),
                p999Us: us(histogram.valueAtPercentile(99.9)), maxUs: us(histogram.max),
                reservationMet: reservationMet, limitExceeded: limitExceeded,
                spareShare: spareTotal > 0 ? spare[index] / spareTotal : nil,
                timeline: measured.timeline.map { Double($0) / intervalSeconds },
                cdf: hasData ? cdfPercentiles.map { (us(histogram.valueAtPercentile($0)), $0 / 100) } : []))
        }
        let weighted = zip(scenario.tenants, iops).map { tenant, rate in rate / Double(tenant.weight) }
        let sum = weighted.reduce(0, +)
        let squares = weighted.reduce(0) { $0 + $1 * $1 }
        let jain = squares > 0 ? sum * sum / (Double(weighted.count) * squares) : 0
        let completed = measurements.reduce(0) { $0 + $1.completed }
        return LabPolicyResult(policy: policy.name, driver: policy.driver, maxInFlight: policy.maxInFlight, tenants: tenants,
                               totalIops: Double(completed) / (Double(endNs) / 1e9), jainIndex: jain, eventsHandled: eventsHandled, wallSeconds: wallSeconds)
    }

    /// What a tenant asks for, in IOPS: unbounded for a closed loop.
    static func offeredIops(_ tenant: LabTenant) -> Double {
        switch tenant.arrival {
        case .closed: .infinity
        case .poisson(let rate), .uniform(let rate): rate
        case .bursty(let rate, let onNs, let offNs): rate * Double(onNs) / Double(onNs + offNs)
        }
    }
}
