/// The permissions the graph takes and shares on one node, summed over all its users.
public struct NodePermissions: Sendable, Equatable {
    public var take: Permissions
    public var share: Permissions

    public init(take: Permissions, share: Permissions) {
        self.take = take
        self.share = share
    }

    public static let unused = NodePermissions(take: [], share: .all)
}

extension GraphModel {
    /// Checks the whole graph: every child exists, no cycle, no two users' permissions conflict,
    /// no writer on a read-only node. Returns what each node must take and share.
    public func validated() throws(GraphError) -> [String: NodePermissions] {
        for node in nodes.values.sorted(by: { $0.name < $1.name }) {
            for link in node.children where nodes[link.nodeName] == nil {
                throw .missingChild(node: node.name, role: link.role, child: link.nodeName)
            }
        }
        for backend in backends.values where nodes[backend.nodeName] == nil {
            throw .noSuchNode(backend.nodeName)
        }
        try checkNoCycle()
        return try computePermissions()
    }

    private func checkNoCycle() throws(GraphError) {
        enum Mark { case visiting, done }
        var marks: [String: Mark] = [:]
        var path: [String] = []
        func visit(_ name: String) throws(GraphError) {
            switch marks[name] {
            case .done?: return
            case .visiting?:
                let start = path.firstIndex(of: name) ?? 0
                throw .cycle(path: Array(path[start...]) + [name])
            case nil: break
            }
            marks[name] = .visiting
            path.append(name)
            for link in nodes[name]?.children ?? [] { try visit(link.nodeName) }
            path.removeLast()
            marks[name] = .done
        }
        for name in nodes.keys.sorted() { try visit(name) }
    }

    /// Top-down: a node's needs on its children follow from what its own users take and share.
    private func computePermissions() throws(GraphError) -> [String: NodePermissions] {
        struct Use { let user: String; let role: String; let take: Permissions; let share: Permissions }
        var uses: [String: [Use]] = [:]
        for backend in backends.values.sorted(by: { $0.name < $1.name }) {
            uses[backend.nodeName, default: []].append(Use(user: "backend '\(backend.name)'", role: "root", take: backend.take, share: backend.share))
        }
        var result: [String: NodePermissions] = [:]
        for name in bottomUpOrder().reversed() {
            let node = nodes[name]!
            let nodeUses = uses[name] ?? []
            for use in nodeUses {
                for other in nodeUses where other.user != use.user || other.role != use.role {
                    let blocked = use.take.subtracting(other.share)
                    if let permission = Permissions.names.first(where: { blocked.contains($0.0) }) {
                        throw .permissionConflict(node: name, user: use.user, role: use.role, permission: permission.0, blockedBy: other.user)
                    }
                }
            }
            let take = nodeUses.reduce(Permissions()) { $0.union($1.take) }
            let share = nodeUses.reduce(Permissions.all) { $0.intersection($1.share) }
            // As QEMU's bdrv_node_refresh_perm: unchanged writes (copy-on-read) still write.
            let writing: Permissions = [.write, .writeUnchanged, .resize]
            if node.configuration.readOnly, !take.intersection(writing).isEmpty,
               let writer = nodeUses.first(where: { !$0.take.intersection(writing).isEmpty }) {
                throw .readOnly(node: name, user: writer.user)
            }
            result[name] = nodeUses.isEmpty ? .unused : NodePermissions(take: take, share: share)
            for link in node.children {
                let (childTake, childShare) = node.configuration.childPermissions(for: link, parentsTake: take, parentsShare: share)
                uses[link.nodeName, default: []].append(Use(user: "node '\(name)'", role: link.role.rawValue, take: childTake, share: childShare))
            }
        }
        return result
    }
}
