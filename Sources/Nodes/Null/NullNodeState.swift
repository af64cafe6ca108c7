import StrataGraph

/// A null-co node's shared state: only its options, since it keeps no data.
final class NullNodeState: NodeState {
    let configuration: NullNodeConfiguration

    init(configuration: NullNodeConfiguration) {
        self.configuration = configuration
    }

    var sizeBytes: UInt64 { configuration.sizeBytes }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        NullNodeInstance(configuration: configuration, queue: queue)
    }
}
