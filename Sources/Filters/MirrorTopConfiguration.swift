import StrataGraph

/// A mirror_top node's options: its child, the mirror's source.
struct MirrorTopConfiguration: NodeConfiguration {
    let file: ChildLink

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        try reader.finish()
    }

    /// QEMU's bdrv_mirror_top_child_perm: the parents' use passes down, and everything is shared
    /// (the job reads the source and replaces it at the pivot).
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake, .all)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        return MirrorTopNodeState(file: file, child: child)
    }
}
