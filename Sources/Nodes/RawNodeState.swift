import StrataGraph

/// A raw node's shared state: its window over the child.
final class RawNodeState: NodeState {
    let configuration: RawNodeConfiguration
    let child: any NodeState

    init(configuration: RawNodeConfiguration, child: any NodeState) {
        self.configuration = configuration
        self.child = child
    }

    /// The window's size now. Read from the child each time, as QEMU's raw_co_getlength does, so
    /// the node follows a resized child (an explicit size is clipped when the child shrank).
    var sizeBytes: UInt64 {
        let childSize = child.sizeBytes
        let available = childSize > configuration.offsetBytes ? childSize - configuration.offsetBytes : 0
        return configuration.explicitSizeBytes.map { min($0, available) } ?? available
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: any BlockNode]) -> any BlockNode {
        guard let file = children[configuration.file] else {
            preconditionFailure("raw instance built without its '\(configuration.file.optionKey)' child")
        }
        return RawNodeInstance(state: self, file: file, queue: queue)
    }
}
