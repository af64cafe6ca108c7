import StrataGraph

/// A blkdebug node's shared state: its child and rules; it answers for its child's layer.
final class BlkdebugNodeState: NodeState, TransparentChainLayer {
    private let image: ChildLink
    private let child: ChildStateReference
    let rules: [BlkdebugRule]

    init(image: ChildLink, child: any NodeState, rules: [BlkdebugRule]) {
        self.image = image
        self.child = ChildStateReference(child)
        self.rules = rules
    }

    var sizeBytes: UInt64 { child.current.sizeBytes }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let handle = children.child(image.optionKey) else { preconditionFailure("blkdebug instance built without its image") }
        return BlkdebugInstance(queue: queue, child: handle, rules: rules)
    }

    func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(image.optionKey) { child.replace(with: newChild) }
    }

    var filteredState: any NodeState { child.current }
}
