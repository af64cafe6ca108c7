import StrataGraph

/// A snapshot-access node's shared state: the copy-before-write filter it reads through.
final class SnapshotAccessNodeState: NodeState {
    private let file: ChildLink
    private let filter: CopyBeforeWriteNodeState

    init(file: ChildLink, filter: CopyBeforeWriteNodeState) {
        self.file = file
        self.filter = filter
    }

    var sizeBytes: UInt64 { filter.sizeBytes }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let child = children.child(file.optionKey), let instance = child.node as? CopyBeforeWriteInstance else {
            preconditionFailure("snapshot-access instance built without its copy-before-write child")
        }
        return SnapshotAccessInstance(queue: queue, filter: instance)
    }
}
