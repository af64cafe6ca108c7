import StrataGraph

/// A throttle node's validated options.
struct ThrottleConfiguration: NodeConfiguration {
    let file: ChildLink
    /// The group named by `throttle-group`, nil for the node's private group.
    let groupName: String?
    /// Limits to give the group; nil leaves an existing group's limits as they are.
    let limits: ThrottleLimits?

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        groupName = try reader.optionalString("throttle-group")
        if let groupName, !Self.isWellFormedID(groupName) {
            throw reader.bad("throttle-group", "must start with a letter and contain only letters, digits, '-', '.' and '_', got '\(groupName)'")
        }
        if var nested = try reader.object("limits") {
            limits = try ThrottleLimits(parsing: &nested, optionPrefix: "limits.")
            do {
                try nested.finish()
            } catch {
                // Name the key by its full path, as QEMU's option visitor does.
                if case .unexpectedOption(let node, let option) = error { throw .unexpectedOption(node: node, option: "limits." + option) }
                throw error
            }
        } else {
            limits = nil
        }
        try reader.finish()
    }

    /// The group this node joins. A private group's name starts with '#', which no user-given name
    /// may (QEMU's rule for generated names), so it can never be shared by accident.
    func resolvedGroupName(nodeName: String) -> String { groupName ?? "#" + nodeName }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        return try await ThrottleNodeState.open(nodeName: name, configuration: self, child: child, context: context)
    }

    /// QEMU's id_wellformed, the rule for object ids such as throttle group names.
    static func isWellFormedID(_ id: String) -> Bool {
        func isLetter(_ scalar: Unicode.Scalar) -> Bool { ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) }
        guard let first = id.unicodeScalars.first, isLetter(first) else { return false }
        return id.unicodeScalars.allSatisfy { isLetter($0) || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0) }
    }
}
