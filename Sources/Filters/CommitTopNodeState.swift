import StrataGraph

/// A commit_top node's shared state: the layer it stands for. As a chain walk skips QEMU's
/// filters, it answers as its child would: block status, and the child's backing layer below.
final class CommitTopNodeState: NodeState, TransparentChainLayer {
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

    var filteredState: any NodeState { child.current }
}
