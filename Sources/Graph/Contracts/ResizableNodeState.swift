/// A protocol node that changes size live (QMP's block_resize): the storage first, then the size
/// every queue sees.
public protocol ResizableNodeState: NodeState {
    func resize(to newSizeBytes: UInt64) async throws
}
