import StrataGraph

/// A copy-on-read node's validated options.
struct CopyOnReadConfiguration: NodeConfiguration {
    let file: ChildLink
    /// The lowest backing node whose data is copied; nil copies from the whole chain.
    let bottom: String?

    var children: [ChildLink] { [file] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        bottom = try reader.optionalString("bottom")
        try reader.finish()
    }

    /// QEMU's cor_child_perm: read, write and resize pass through; the filter itself writes
    /// unchanged data (the copies), and lets others do so too.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        let passThrough: Permissions = [.consistentRead, .write, .resize]
        return (parentsTake.intersection(passThrough).union(.writeUnchanged),
                parentsShare.intersection(passThrough).union(.writeUnchanged))
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        return try CopyOnReadNodeState(nodeName: name, configuration: self, child: child)
    }
}
