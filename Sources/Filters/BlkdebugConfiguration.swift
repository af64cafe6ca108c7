import StrataGraph

/// A blkdebug node's options: its child and its rules.
struct BlkdebugConfiguration: NodeConfiguration {
    let image: ChildLink
    let rules: [BlkdebugRule]
    let stateRules: [BlkdebugStateRule]
    let limits: BlkdebugLimits

    var children: [ChildLink] { [image] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        image = try reader.child("image", role: .filtered)
        var rules = try Self.list("inject-error", in: &reader).map { (fields: [String: JSONValue]) throws(GraphError) -> BlkdebugRule in
            var ruleReader = OptionReader(nodeName: reader.nodeName, options: fields)
            return try BlkdebugRule(parsing: &ruleReader)
        }
        var stateRules = try Self.list("set-state", in: &reader).map { (fields: [String: JSONValue]) throws(GraphError) -> BlkdebugStateRule in
            var ruleReader = OptionReader(nodeName: reader.nodeName, options: fields)
            return try BlkdebugStateRule(parsing: &ruleReader)
        }
        // The file's rules come first, as QEMU reads the config file before the options.
        if let path = try reader.optionalString("config") {
            var fileRules: [BlkdebugRule] = []
            var fileStateRules: [BlkdebugStateRule] = []
            for section in try BlkdebugConfigFile(path: path, nodeName: reader.nodeName).sections {
                var sectionReader = OptionReader(nodeName: "\(reader.nodeName) (config \(path):\(section.line))", options: section.options)
                if section.name == "inject-error" {
                    fileRules.append(try BlkdebugRule(parsing: &sectionReader))
                } else {
                    fileStateRules.append(try BlkdebugStateRule(parsing: &sectionReader))
                }
            }
            rules = fileRules + rules
            stateRules = fileStateRules + stateRules
        }
        self.rules = rules
        self.stateRules = stateRules
        limits = try BlkdebugLimits(parsing: &reader)
        try reader.finish()
    }

    private static func list(_ key: String, in reader: inout OptionReader) throws(GraphError) -> [[String: JSONValue]] {
        guard let list = reader.raw(key), list != .null else { return [] }
        guard case .array(let items) = list else { throw reader.bad(key, "expects a list of rules") }
        var result: [[String: JSONValue]] = []
        for (index, item) in items.enumerated() {
            guard case .object(let fields) = item else { throw reader.bad("\(key).\(index)", "expects an object") }
            result.append(fields)
        }
        return result
    }

    /// A filter: its parents' use passes down, and what they share.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake, parentsShare)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[image] else { throw GraphError.missingChild(node: name, role: .filtered, child: image.nodeName) }
        return BlkdebugNodeState(image: image, child: child, rules: rules, stateRules: stateRules, limits: limits)
    }
}
