import StrataRuntime

/// A node state's reference to a child's shared state, for what the parent reads from it (size).
/// The graph relinks it when a transaction points the edge at another node, so the parent never
/// keeps reading a node that was replaced or retired.
public final class ChildStateReference: Sendable {
    private let state: Locked<any NodeState>

    public init(_ state: any NodeState) { self.state = Locked(state) }

    public var current: any NodeState { state.withLock { $0 } }

    public func replace(with newState: any NodeState) { state.withLock { $0 = newState } }
}
