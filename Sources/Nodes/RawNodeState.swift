import StrataGraph

/// A raw node's shared state: its window over the child.
final class RawNodeState: NodeState {
    let configuration: RawNodeConfiguration
    let child: ChildStateReference

    init(configuration: RawNodeConfiguration, child: any NodeState) {
        self.configuration = configuration
        self.child = ChildStateReference(child)
    }

    /// The window's size now. Read from the child each time, as QEMU's raw_co_getlength does, so
    /// the node follows a resized child (an explicit size is clipped when the child shrank).
    var sizeBytes: UInt64 {
        let childSize = child.current.sizeBytes
        let available = childSize > configuration.offsetBytes ? childSize - configuration.offsetBytes : 0
        return configuration.explicitSizeBytes.map { min($0, available) } ?? available
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: any BlockNode]) -> any BlockNode {
        guard let file = children.child(configuration.file.optionKey) else {
            preconditionFailure("raw instance built without its '\(configuration.file.optionKey)' child")
        }
        return RawNodeInstance(state: self, file: file, queue: queue)
    }

    func relink(children: [ChildLink: any NodeState]) {
        if let file = children.child(configuration.file.optionKey) { child.replace(with: file) }
    }
}
