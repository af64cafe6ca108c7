/// The role a child plays for its parent (QEMU's BdrvChildRole, reduced to what drivers need).
public enum ChildRole: String, Sendable, Hashable, CaseIterable {
    case file
    case backing
    case filtered
    case data
}

/// One edge from a parent node to a child, as the parent's options name it.
public struct ChildLink: Sendable, Hashable {
    public let role: ChildRole
    /// The option key that names the child in the parent's JSON ("file", "backing", "data-file").
    public let optionKey: String
    public let nodeName: String

    public init(role: ChildRole, optionKey: String, nodeName: String) {
        self.role = role
        self.optionKey = optionKey
        self.nodeName = nodeName
    }
}

extension Dictionary where Key == ChildLink {
    /// The child under an option key ("file", "backing"): the graph may relink the edge to another
    /// node (a filter inserted below), so nodes find children by key, not by the node name they opened with.
    public func child(_ optionKey: String) -> Value? {
        first { $0.key.optionKey == optionKey }?.value
    }
}
