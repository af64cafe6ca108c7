import StrataGraph

/// Every scheduling policy: one line each. The driver catalog registers them as filter drivers and
/// the lab runs them by name.
public enum SchedulingPolicyCatalog {
    public static let policies: [any SchedulingPolicy.Type] = [
        FifoPolicy.self,
        LeakyBucketPolicy.self,
        TokenBucketPolicy.self,
        MClockPolicy.self,
        DeadlinePolicy.self,
        WeightedFairPolicy.self,
    ]

    public static var descriptors: [DriverDescriptor] { policies.map { $0.filterDescriptor } }

    public static func policy(named driver: String) -> (any SchedulingPolicy.Type)? {
        policies.first { $0.driverName == driver }
    }
}

extension SchedulingPolicy {
    static var filterDescriptor: DriverDescriptor { PolicyFilter<Self>.descriptor }
}

extension SchedulingPolicy {
    /// Builds the policy from `blockdev-add`-style options (`tenants` and its own keys, without
    /// `file` and `max-in-flight`), as the lab runs it.
    public static func make(parsing reader: inout OptionReader) throws(GraphError) -> Self {
        let parsed = try TenantOptions.parse(&reader) { (entry: inout OptionReader) throws(GraphError) in
            try tenant(parsing: &entry)
        }
        let policy = try Self(parsing: &reader, tenants: parsed.tenants)
        try reader.finish()
        return policy
    }
}
