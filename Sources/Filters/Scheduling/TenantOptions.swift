import StrataGraph

/// A policy node's `tenants` option: a list of tenant objects, each matched to requests by its
/// `tag` (by default its position). Accepted as a JSON array (`blockdev-add`) or as an object with
/// keys 0, 1, ... (the command line's `tenants.0.weight=2` form).
struct TenantOptions {
    /// Each tenant's tag, in list order.
    let tags: [UInt32]

    /// Parses the list with `parseTenant` for each entry's policy options, in list order.
    static func parse<Tenant>(_ reader: inout OptionReader,
                              parseTenant: (inout OptionReader) throws(GraphError) -> Tenant) throws(GraphError)
        -> (options: TenantOptions, tenants: [Tenant]) {
        let entries = try Self.entries(&reader)
        var tags: [UInt32] = []
        var tenants: [Tenant] = []
        for (index, fields) in entries.enumerated() {
            var entry = OptionReader(nodeName: reader.nodeName, options: fields)
            let tag = UInt32(try Self.nested(index) { () throws(GraphError) in
                try entry.integer("tag", default: Int64(index), range: 0...Int64(UInt32.max))
            })
            if tags.contains(tag) { throw reader.bad("tenants.\(index).tag", "tag \(tag) is used by two tenants") }
            tags.append(tag)
            tenants.append(try Self.nested(index) { () throws(GraphError) in
                let tenant = try parseTenant(&entry)
                try entry.finish()
                return tenant
            })
        }
        return (TenantOptions(tags: tags), tenants)
    }

    /// The tenant a request of this tag belongs to: the one listing its tag, else the first.
    func index(ofTag tag: UInt32) -> Int {
        // A linear scan: tenant lists are short, and a dictionary would hash on every request.
        for index in tags.indices where tags[index] == tag { return index }
        return 0
    }

    private static func entries(_ reader: inout OptionReader) throws(GraphError) -> [[String: JSONValue]] {
        guard let value = reader.raw("tenants"), value != .null else {
            throw .missingOption(node: reader.nodeName, option: "tenants")
        }
        var list: [JSONValue]
        switch value {
        case .array(let items):
            list = items
        case .object(let fields):
            list = []
            for index in 0..<fields.count {
                guard let item = fields[String(index)] else {
                    throw reader.bad("tenants", "expects keys 0 to \(fields.count - 1), missing \(index)")
                }
                list.append(item)
            }
        default:
            throw reader.bad("tenants", "expects a list of tenant objects, got \(value.typeName)")
        }
        guard !list.isEmpty else { throw reader.bad("tenants", "must name at least one tenant") }
        guard list.count <= 1024 else { throw reader.bad("tenants", "at most 1024 tenants, got \(list.count)") }
        var entries: [[String: JSONValue]] = []
        for (index, item) in list.enumerated() {
            guard case .object(let fields) = item else {
                throw reader.bad("tenants.\(index)", "expects an object, got \(item.typeName)")
            }
            entries.append(fields)
        }
        return entries
    }

    /// Names a tenant entry's key by its full path, as QEMU's option visitor does.
    private static func nested<T>(_ index: Int, _ body: () throws(GraphError) -> T) throws(GraphError) -> T {
        do {
            return try body()
        } catch {
            switch error {
            case .unexpectedOption(let node, let option): throw .unexpectedOption(node: node, option: "tenants.\(index).\(option)")
            case .missingOption(let node, let option): throw .missingOption(node: node, option: "tenants.\(index).\(option)")
            case .badOption(let node, let option, let reason): throw .badOption(node: node, option: "tenants.\(index).\(option)", reason: reason)
            default: throw error
            }
        }
    }
}
