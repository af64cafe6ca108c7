import StrataGraph

/// A commit_top node's options: its child.
struct CommitTopConfiguration: NodeConfiguration {
    let file: ChildLink

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        try reader.finish()
    }

    /// QEMU's bdrv_commit_top_child_perm shares everything; Strata keeps reads consistent.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake.intersection(.consistentRead), .all)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        return CommitTopNodeState(file: file, child: child)
    }
}
