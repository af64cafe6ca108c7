import StrataGraph

/// A node state whose instances read no child instances (protocol nodes), so an opener can build
/// one on the control executor by itself, for example to read a format's metadata at open.
/// The graph builds instances for queues only; a node with children cannot be instantiated alone.
protocol LeafNodeState: NodeState {}

extension FileNodeState: LeafNodeState {}
extension NullNodeState: LeafNodeState {}
