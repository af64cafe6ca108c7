/// One node of the graph value: its name, driver, options (children named, never inline) and the
/// configuration its driver parsed from them.
public struct NodeEntry: Sendable {
    public let name: String
    public let driver: String
    public let isFilter: Bool
    public let options: [String: JSONValue]
    public let configuration: any NodeConfiguration
    /// Defined inline in its parent's options (`"file": {...}`), named or not: it belongs to the
    /// parent, not to whoever added the parent, and goes when its last parent goes (QEMU's
    /// implicit children, which the monitor does not own).
    public internal(set) var ownedByParent = false

    public var children: [ChildLink] { configuration.children }
}

/// A named root that devices and exports attach to (QEMU's BlockBackend).
public struct BackendEntry: Sendable, Equatable {
    public let name: String
    public var nodeName: String
    public let take: Permissions
    public let share: Permissions

    /// A device's default use, as QEMU's: reads consistently, writes unless read-only, and lets
    /// others read and do unchanged writes (plus writes with share-rw).
    public init(name: String, nodeName: String, writable: Bool = true, shareWrites: Bool = false) {
        self.name = name
        self.nodeName = nodeName
        self.take = writable ? [.consistentRead, .write] : [.consistentRead]
        self.share = shareWrites ? [.consistentRead, .writeUnchanged, .write] : [.consistentRead, .writeUnchanged]
    }
}

/// Who uses a node through an edge: a parent node in a role, or a backend.
public struct NodeUser: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case node(role: ChildRole, optionKey: String)
        case backend
    }
    public let name: String
    public let kind: Kind

    public var description: String {
        switch kind {
        case .node(let role, _): "node '\(name)' (\(role.rawValue))"
        case .backend: "backend '\(name)'"
        }
    }
}
