import StrataGraph

/// A copy-before-write node's options.
struct CopyBeforeWriteConfiguration: NodeConfiguration {
    enum OnCopyError: String, Sendable {
        case breakGuestWrite = "break-guest-write"
        case breakSnapshot = "break-snapshot"
    }

    let file: ChildLink
    let target: ChildLink
    let onCopyError: OnCopyError

    var children: [ChildLink] { [file, target] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .filtered)
        target = try reader.child("target", role: .data)
        let policy = try reader.optionalString("on-cbw-error") ?? OnCopyError.breakGuestWrite.rawValue
        guard let onCopyError = OnCopyError(rawValue: policy) else {
            throw reader.bad("on-cbw-error", "does not accept value '\(policy)'")
        }
        self.onCopyError = onCopyError
        if reader.has("bitmap") { throw reader.bad("bitmap", "is not supported by Strata's copy-before-write; blockdev-backup takes a bitmap") }
        _ = try reader.optionalInteger("cbw-timeout", range: 0...Int64(UInt32.max))
        try reader.finish()
    }

    /// QEMU's cbw_child_perm: the source passes its parents' use down and is read consistently;
    /// the target is written, by the filter and by the backup job, and shared with both.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        if link == target { return ([.consistentRead, .write], .all) }
        return (parentsTake.union(.consistentRead), .all)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let source = children[file] else { throw GraphError.missingChild(node: name, role: .filtered, child: file.nodeName) }
        guard let targetState = children[target] else { throw GraphError.missingChild(node: name, role: .data, child: target.nodeName) }
        guard targetState.sizeBytes >= source.sizeBytes else {
            throw GraphError.openFailed(node: name, reason: "copy-before-write: the target (\(targetState.sizeBytes) bytes) is smaller than the source (\(source.sizeBytes) bytes)")
        }
        return CopyBeforeWriteNodeState(configuration: self, source: source, target: targetState)
    }
}
