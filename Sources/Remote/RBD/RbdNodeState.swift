import StrataGraph
import Synchronization

/// An rbd node's shared state: the open image, used by every queue.
public final class RbdNodeState: NodeState, ResizableNodeState {
    let nodeName: String
    let connection: RbdConnection
    let readOnly: Bool
    private let size: Atomic<UInt64>

    init(nodeName: String, connection: RbdConnection, readOnly: Bool, sizeBytes: UInt64) {
        self.nodeName = nodeName
        self.connection = connection
        self.readOnly = readOnly
        self.size = Atomic(sizeBytes)
    }

    public var sizeBytes: UInt64 { size.load(ordering: .relaxed) }

    public func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        RbdNodeInstance(state: self, queue: queue)
    }

    /// QMP's block_resize: librbd resizes the image in the cluster, then the node takes the size.
    public func resize(to newSizeBytes: UInt64) async throws {
        guard !readOnly else { throw RbdError("\(connection.description) is read-only") }
        try await connection.resize(to: newSizeBytes)
        size.store(newSizeBytes, ordering: .relaxed)
    }

    public func close() async { await connection.close() }
}
