import StrataGraph

/// A commit_top node's shared state: the layer it stands for. As a chain walk skips QEMU's
/// filters, it answers as its child would: block status, and the child's backing layer below.
final class CommitTopNodeState: NodeState, BackingChainLayer {
    private let file: ChildLink
    private let child: ChildStateReference

    init(file: ChildLink, child: any NodeState) {
        self.file = file
        self.child = ChildStateReference(child)
    }

    var sizeBytes: UInt64 { child.current.sizeBytes }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let childHandle = children.child(file.optionKey) else { preconditionFailure("commit_top instance built without its child") }
        return CommitTopInstance(queue: queue, child: childHandle)
    }

    func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(file.optionKey) { child.replace(with: newChild) }
    }

    var backingLayer: (nodeName: String, state: any NodeState)? { (child.current as? any BackingChainLayer)?.backingLayer }

    var allocationUnitBytes: Int { (child.current as? any BackingChainLayer)?.allocationUnitBytes ?? 512 }

    func cachedAllocation(offsetBytes: UInt64, lengthBytes: Int) -> Bool? {
        (child.current as? any BackingChainLayer)?.cachedAllocation(offsetBytes: offsetBytes, lengthBytes: lengthBytes)
    }

    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        try await child.current.blockStatusOrData(offsetBytes: offsetBytes, maxLengthBytes: maxLengthBytes)
    }
}
