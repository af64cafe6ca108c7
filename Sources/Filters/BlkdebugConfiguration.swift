import StrataGraph

/// A blkdebug node's options: its child and its rules.
struct BlkdebugConfiguration: NodeConfiguration {
    let image: ChildLink
    let rules: [BlkdebugRule]

    var children: [ChildLink] { [image] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        image = try reader.child("image", role: .filtered)
        var rules: [BlkdebugRule] = []
        if let list = reader.raw("inject-error"), list != .null {
            guard case .array(let items) = list else { throw reader.bad("inject-error", "expects a list of rules") }
            for (index, item) in items.enumerated() {
                guard case .object(let fields) = item else { throw reader.bad("inject-error.\(index)", "expects an object") }
                var ruleReader = OptionReader(nodeName: reader.nodeName, options: fields)
                rules.append(try BlkdebugRule(parsing: &ruleReader))
            }
        }
        self.rules = rules
        _ = try reader.optionalInteger("align", range: 0...Int64(Int32.max))
        if let config = try reader.optionalString("config") {
            throw reader.bad("config", "('\(config)'): blkdebug configuration files are not supported; give inject-error rules")
        }
        try reader.finish()
    }

    /// A filter: its parents' use passes down, and what they share.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake, parentsShare)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[image] else { throw GraphError.missingChild(node: name, role: .filtered, child: image.nodeName) }
        return BlkdebugNodeState(image: image, child: child, rules: rules)
    }
}
