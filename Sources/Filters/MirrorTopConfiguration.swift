import StrataGraph

/// A mirror_top node's options: its child, the mirror's source, and the granularity of the
/// dirty map the node keeps from the moment it opens (`x-granularity`, set by the job; the driver
/// is internal, as QEMU's).
struct MirrorTopConfiguration: NodeConfiguration {
    let file: ChildLink
    let granularity: UInt64

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        let granularity = try reader.integer("x-granularity", default: 65536, range: 512...(64 << 20))
        guard granularity & (granularity - 1) == 0 else { throw reader.bad("x-granularity", "must be a power of 2") }
        self.granularity = UInt64(granularity)
        try reader.finish()
    }

    /// QEMU's bdrv_mirror_top_child_perm: the parents' use passes down, and everything is shared
    /// (the job reads the source and replaces it at the pivot).
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake, .all)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        return MirrorTopNodeState(file: file, child: child, granularity: granularity)
    }
}
