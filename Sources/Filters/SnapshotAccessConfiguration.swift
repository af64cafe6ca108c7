import StrataGraph

/// A snapshot-access node's options: its copy-before-write child.
struct SnapshotAccessConfiguration: NodeConfiguration {
    let file: ChildLink

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        _ = try reader.bool("read-only", default: true)
        try reader.finish()
    }

    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        ([.consistentRead], .all)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] as? CopyBeforeWriteNodeState else {
            throw GraphError.openFailed(node: name, reason: "snapshot-access: the 'file' child '\(file.nodeName)' must be a copy-before-write node")
        }
        return SnapshotAccessNodeState(file: file, filter: child)
    }
}
