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
    var sizeBytes: UInt64 { windowSize(childSizeBytes: child.current.sizeBytes) }

    func windowSize(childSizeBytes: UInt64) -> UInt64 {
        let available = childSizeBytes > configuration.offsetBytes ? childSizeBytes - configuration.offsetBytes : 0
        return configuration.explicitSizeBytes.map { min($0, available) } ?? available
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let file = children.child(configuration.file.optionKey) else {
            preconditionFailure("raw instance built without its '\(configuration.file.optionKey)' child")
        }
        // The child state is read once here, not per request: every relink builds new instances.
        return RawNodeInstance(state: self, file: file, fileState: child.current, queue: queue)
    }

    func relink(children: [ChildLink: any NodeState]) {
        if let file = children.child(configuration.file.optionKey) { child.replace(with: file) }
    }
}
