import StrataGraph

/// A blkverify node's options: the node under test and the reference.
struct BlkverifyConfiguration: NodeConfiguration {
    let test: ChildLink
    let raw: ChildLink

    var children: [ChildLink] { [test, raw] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        test = try reader.child("test", role: .filtered)
        raw = try reader.child("raw", role: .data)
        try reader.finish()
    }

    /// Both children are used as the parents use the filter: what they write reaches both.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake.union(.consistentRead), parentsShare)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let testState = children[test] else { throw GraphError.missingChild(node: name, role: .filtered, child: test.nodeName) }
        guard let rawState = children[raw] else { throw GraphError.missingChild(node: name, role: .data, child: raw.nodeName) }
        guard testState.sizeBytes == rawState.sizeBytes else {
            throw GraphError.openFailed(node: name, reason: "blkverify: the test image (\(testState.sizeBytes) bytes) and the raw image (\(rawState.sizeBytes) bytes) differ in size")
        }
        return BlkverifyNodeState(configuration: self, test: testState, raw: rawState)
    }
}
