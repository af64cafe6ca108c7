import StrataGraph

/// A copy-on-read node's shared state: its child, the `bottom` of the chain it copies from, and
/// the range lock its instances on every queue share.
final class CopyOnReadNodeState: NodeState {
    let nodeName: String
    private let file: ChildLink
    private let bottom: String?
    private let child: ChildStateReference
    let locks = RangeLock()

    /// Checks that `bottom` is in the child's backing chain, below the child, as QEMU's cor_open.
    init(nodeName: String, configuration: CopyOnReadConfiguration, child: any NodeState) throws(GraphError) {
        self.nodeName = nodeName
        file = configuration.file
        bottom = configuration.bottom
        self.child = ChildStateReference(child)
        if let bottom = configuration.bottom, Self.layers(below: child, downTo: bottom) == nil {
            throw .openFailed(node: nodeName, reason: "Bottom node '\(bottom)' not found in the backing chain of '\(configuration.file.nodeName)'")
        }
    }

    /// The layers under `top` down to the one named `bottom`, included; nil when the chain has no
    /// layer of that name.
    static func layers(below top: any NodeState, downTo bottom: String) -> [any NodeState]? {
        var layers: [any NodeState] = []
        var next = (top as? any BackingChainLayer)?.backingLayer
        while let layer = next {
            layers.append(layer.state)
            if layer.nodeName == bottom { return layers }
            next = (layer.state as? any BackingChainLayer)?.backingLayer
        }
        return nil
    }

    /// A filter is as large as what it filters.
    var sizeBytes: UInt64 { child.current.sizeBytes }

    func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(file.optionKey) { child.replace(with: newChild) }
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let childInstance = children.child(file.optionKey) else {
            preconditionFailure("copy-on-read node \(nodeName): no instance of child \(file.nodeName)")
        }
        let state = child.current
        // Every relink builds new instances, so the chain is resolved once per instance. A bottom
        // that left the chain (a replaced child) copies from the whole chain rather than none of it.
        let intermediates = bottom.map { Self.layers(below: state, downTo: $0) ?? Self.wholeChain(below: state) }
        return CopyOnReadInstance(queue: queue, child: childInstance, layer: state as? any BackingChainLayer,
                                  intermediates: intermediates, locks: locks)
    }

    private static func wholeChain(below top: any NodeState) -> [any NodeState] {
        var layers: [any NodeState] = []
        var next = (top as? any BackingChainLayer)?.backingLayer
        while let layer = next {
            layers.append(layer.state)
            next = (layer.state as? any BackingChainLayer)?.backingLayer
        }
        return layers
    }
}

/// A filter answers block status for what it filters, so map and convert see through it.
extension CopyOnReadNodeState: BlockStatusQuerying {
    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        try await child.current.blockStatusOrData(offsetBytes: offsetBytes, maxLengthBytes: maxLengthBytes)
    }
}
