/// The block graph as a value: nodes, their edges, and the backends on top. Edits produce a new
/// value; `validated()` checks the whole of it, so a transaction either yields a graph that passed
/// every check or changes nothing.
public struct GraphModel: Sendable {
    public private(set) var nodes: [String: NodeEntry] = [:]
    public private(set) var backends: [String: BackendEntry] = [:]
    public let registry: DriverRegistry
    private var anonymousCounter = 0

    public init(registry: DriverRegistry) { self.registry = registry }

    // MARK: Queries

    public func node(_ name: String) throws(GraphError) -> NodeEntry {
        guard let node = nodes[name] else { throw .noSuchNode(name) }
        return node
    }

    /// Every edge into `name`: parent nodes and backends.
    public func users(of name: String) -> [NodeUser] {
        var users: [NodeUser] = []
        for parent in nodes.values.sorted(by: { $0.name < $1.name }) {
            for link in parent.children where link.nodeName == name {
                users.append(NodeUser(name: parent.name, kind: .node(role: link.role, optionKey: link.optionKey)))
            }
        }
        for backend in backends.values.sorted(by: { $0.name < $1.name }) where backend.nodeName == name {
            users.append(NodeUser(name: backend.name, kind: .backend))
        }
        return users
    }

    /// Node names ordered children first (every node after all of its children).
    public func bottomUpOrder() -> [String] {
        var order: [String] = []
        var visited: Set<String> = []
        func visit(_ name: String) {
            guard visited.insert(name).inserted, let node = nodes[name] else { return }
            for link in node.children { visit(link.nodeName) }
            order.append(name)
        }
        for name in nodes.keys.sorted() { visit(name) }
        return order
    }

    // MARK: Edits (each leaves validation of the whole to `validated()`)

    /// blockdev-add: parses the options, splitting inline child definitions into nodes of their own.
    @discardableResult
    public mutating func addNode(_ options: JSONValue) throws(GraphError) -> String {
        guard case .object(var fields) = options else { throw .badEdit("node options must be a JSON object, got \(options.typeName)") }
        guard let driverValue = fields["driver"] else { throw .missingOption(node: Self.nameForErrors(fields), option: "driver") }
        guard case .string(let driver) = driverValue else { throw .badOption(node: Self.nameForErrors(fields), option: "driver", reason: "expects a string") }
        let descriptor = try registry.descriptor(driver)
        let name: String
        switch fields["node-name"] {
        case .string(let given)?:
            try Self.checkNodeName(given)
            name = given
        case nil:
            anonymousCounter += 1
            name = "#block\(anonymousCounter)"
            fields["node-name"] = .string(name)
        case let other?:
            throw .badOption(node: "?", option: "node-name", reason: "expects a string, got \(other.typeName)")
        }
        guard nodes[name] == nil else { throw .duplicateName(name) }
        // Inline children (`"file": {"driver": ...}`) become nodes of their own, named by reference.
        for key in fields.keys.sorted() {
            if case .object(let childFields) = fields[key]!, childFields["driver"] != nil {
                let child = try addNode(.object(childFields))
                nodes[child]?.ownedByParent = true
                fields[key] = .string(child)
            }
        }
        try insertEntry(name: name, descriptor: descriptor, fields: fields)
        return name
    }

    /// Adds a node that belongs to its parents rather than to whoever added it (see
    /// `GraphEdit.addImplicitNode`).
    public mutating func addImplicitNode(_ options: JSONValue) throws(GraphError) {
        let name = try addNode(options)
        nodes[name]?.ownedByParent = true
    }

    public mutating func removeNode(_ name: String) throws(GraphError) {
        _ = try node(name)
        let users = users(of: name)
        guard users.isEmpty else { throw .inUse(node: name, users: users.map(\.description)) }
        nodes[name] = nil
    }

    /// Inserts a filter above `target`: every user of `target` now uses the filter, whose filtered
    /// child is `target`. The filter's options need not name its child. Users below the filter
    /// keep `target` (as QEMU's should_update_child): a fleecing overlay that is both a
    /// copy-before-write filter's target and backed by its source would otherwise make a cycle.
    public mutating func insertFilter(above target: String, filter options: JSONValue) throws(GraphError) -> String {
        let usersBefore = users(of: target)
        let filterName = try addFilter(options, over: target)
        let below = descendants(of: filterName)
        for user in usersBefore where user.kind == .backend || !below.contains(user.name) {
            try repoint(user, from: target, to: filterName)
        }
        return filterName
    }

    /// Every node reachable from `name` through child edges.
    func descendants(of name: String) -> Set<String> {
        var seen: Set<String> = []
        var pending = nodes[name]?.children.map(\.nodeName) ?? []
        while let next = pending.popLast() {
            guard seen.insert(next).inserted else { continue }
            pending += nodes[next]?.children.map(\.nodeName) ?? []
        }
        return seen
    }

    /// Inserts a filter on one edge: `parent`'s child under `optionKey` (or backend `parent`).
    public mutating func insertFilter(onEdgeOf parent: String, optionKey: String?, filter options: JSONValue) throws(GraphError) -> String {
        let (user, target) = try edge(parent: parent, optionKey: optionKey)
        let filterName = try addFilter(options, over: target)
        try repoint(user, from: target, to: filterName)
        return filterName
    }

    /// Removes a filter, handing its users to its filtered child.
    public mutating func removeFilter(_ name: String) throws(GraphError) {
        let filter = try node(name)
        guard filter.isFilter, let child = Self.filteredChild(of: filter)?.nodeName else { throw .notAFilter(name) }
        for user in users(of: name) { try repoint(user, from: name, to: child) }
        nodes[name] = nil
    }

    /// Every user of `old` now uses `new`; `old` stays in the graph, unused.
    public mutating func replace(_ old: String, with new: String) throws(GraphError) {
        _ = try node(old)
        _ = try node(new)
        for user in users(of: old) where user.name != new { try repoint(user, from: old, to: new) }
    }

    /// New options for an existing node, same driver.
    public mutating func reopen(_ options: JSONValue) throws(GraphError) {
        guard case .object(let fields) = options, case .string(let name)? = fields["node-name"] else {
            throw .badEdit("reopen needs an object with 'node-name'")
        }
        let old = try node(name)
        guard case .string(let driver)? = fields["driver"] ?? .string(old.driver), driver == old.driver else {
            throw .badEdit("reopen of '\(name)' cannot change its driver from '\(old.driver)'")
        }
        var merged = fields
        merged["driver"] = .string(driver)
        nodes[name] = nil
        try insertEntry(name: name, descriptor: try registry.descriptor(driver), fields: merged)
    }

    public mutating func addBackend(_ backend: BackendEntry) throws(GraphError) {
        guard backends[backend.name] == nil else { throw .duplicateName(backend.name) }
        _ = try node(backend.nodeName)
        backends[backend.name] = backend
    }

    public mutating func removeBackend(_ name: String) throws(GraphError) {
        guard backends.removeValue(forKey: name) != nil else { throw .noSuchBackend(name) }
    }

    // MARK: Helpers

    private mutating func insertEntry(name: String, descriptor: DriverDescriptor, fields: [String: JSONValue]) throws(GraphError) {
        var reader = OptionReader(nodeName: name, options: fields)
        let configuration = try descriptor.parse(&reader)
        try reader.finish()
        if descriptor.isFilter && configuration.children.count != 1 && configuration.children.filter({ $0.role == .filtered }).count != 1 {
            throw .notAFilter(name)
        }
        let owned = nodes[name]?.ownedByParent ?? false
        nodes[name] = NodeEntry(name: name, driver: descriptor.name, isFilter: descriptor.isFilter, options: fields, configuration: configuration)
        nodes[name]?.ownedByParent = owned
    }

    /// The child a filter passes guest I/O to: its only child, or the one in the `filtered` role
    /// (copy-before-write also has its `target`).
    static func filteredChild(of filter: NodeEntry) -> ChildLink? {
        filter.children.count == 1 ? filter.children[0] : filter.children.first { $0.role == .filtered }
    }

    private mutating func addFilter(_ options: JSONValue, over target: String) throws(GraphError) -> String {
        _ = try node(target)
        guard case .object(var fields) = options else { throw .badEdit("filter options must be a JSON object") }
        if fields["file"] == nil { fields["file"] = .string(target) }
        guard case .string(let driver)? = fields["driver"], try registry.descriptor(driver).isFilter else {
            throw .notAFilter(Self.nameForErrors(fields))
        }
        let name = try addNode(.object(fields))
        guard try Self.filteredChild(of: node(name))?.nodeName == target else {
            throw .badEdit("filter '\(name)' must filter '\(target)'")
        }
        return name
    }

    private func edge(parent: String, optionKey: String?) throws(GraphError) -> (NodeUser, String) {
        if let backend = backends[parent] {
            return (NodeUser(name: parent, kind: .backend), backend.nodeName)
        }
        let node = try node(parent)
        let links = node.children.filter { optionKey == nil || $0.optionKey == optionKey }
        guard links.count == 1 else {
            throw .badEdit("node '\(parent)' has \(links.isEmpty ? "no" : "several") children\(optionKey.map { " under '\($0)'" } ?? ""); name the edge with 'child'")
        }
        return (NodeUser(name: parent, kind: .node(role: links[0].role, optionKey: links[0].optionKey)), links[0].nodeName)
    }

    private mutating func repoint(_ user: NodeUser, from old: String, to new: String) throws(GraphError) {
        switch user.kind {
        case .backend:
            backends[user.name]?.nodeName = new
        case .node(_, let optionKey):
            let parent = try node(user.name)
            guard case .string(old)? = parent.options[optionKey] else { return }
            var fields = parent.options
            fields[optionKey] = .string(new)
            nodes[user.name] = nil
            try insertEntry(name: parent.name, descriptor: try registry.descriptor(parent.driver), fields: fields)
        }
    }

    /// QEMU's rule: a letter first, then letters, digits, '-', '.', '_'; at most 31 characters.
    static func checkNodeName(_ name: String) throws(GraphError) {
        guard let first = name.unicodeScalars.first, name.count <= 31,
              first.properties.isAlphabetic, first.isASCII,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0)) })
        else { throw .badNodeName(name) }
    }

    private static func nameForErrors(_ fields: [String: JSONValue]) -> String {
        if case .string(let name)? = fields["node-name"] { return name }
        return "(unnamed node)"
    }
}
