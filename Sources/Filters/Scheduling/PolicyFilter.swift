import StrataGraph

/// A scheduling-policy filter driver: several tenants (requests told apart by their tag) share the
/// `file` child, and the policy decides the order in which their requests reach it, holding at most
/// `max-in-flight` there at once.
///
/// Options: `file`, `max-in-flight` (1-4096, default 8: below the device's own parallelism a
/// policy has nothing to choose between, far above it the device's queue decides instead),
/// `tenants` (a list; each entry's `tag` and the policy's per-tenant keys) and the policy's own.
public enum PolicyFilter<Policy: SchedulingPolicy> {
    public static var descriptor: DriverDescriptor {
        DriverDescriptor(name: Policy.driverName, isFilter: true) {
            (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
            try PolicyConfiguration<Policy>(parsing: &reader)
        }
    }
}

/// A policy node's validated options.
struct PolicyConfiguration<Policy: SchedulingPolicy>: NodeConfiguration {
    static var defaultMaxInFlight: Int { 8 }

    let file: ChildLink
    let maxInFlight: Int
    let tenants: TenantOptions
    let policy: Policy

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        maxInFlight = Int(try reader.integer("max-in-flight", default: Int64(Self.defaultMaxInFlight), range: 1...4096))
        let parsed = try TenantOptions.parse(&reader) { (entry: inout OptionReader) throws(GraphError) in
            try Policy.tenant(parsing: &entry)
        }
        tenants = parsed.options
        policy = try Policy(parsing: &reader, tenants: parsed.tenants)
        try reader.finish()
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        return PolicyNodeState(nodeName: name, configuration: self, child: child, nowNs: context.clock.nowNs)
    }
}
