/// One edit of a transaction, in the shape of a QMP transaction action:
/// `{"type": "blockdev-add", "data": {...blockdev options...}}`.
public enum GraphEdit: Sendable {
    case addNode(JSONValue)
    /// A node that belongs to its parents, not to the monitor (an overlay blockdev-snapshot-sync
    /// creates): blockdev-del refuses it, and it goes with its last parent.
    case addImplicitNode(JSONValue)
    case removeNode(String)
    case insertFilterAbove(node: String, filter: JSONValue)
    case insertFilterOnEdge(parent: String, optionKey: String?, filter: JSONValue)
    case removeFilter(String)
    case replace(node: String, with: String)
    case reopen(JSONValue)
    case addBackend(BackendEntry)
    case removeBackend(String)

    /// Accepts one action, an array of actions, or `{"actions": [...]}` (QMP's transaction arguments).
    public static func parseList(_ json: JSONValue) throws(GraphError) -> [GraphEdit] {
        switch json {
        case .array(let actions):
            guard !actions.isEmpty else { throw .badEdit("a transaction needs at least one action") }
            var edits: [GraphEdit] = []
            for action in actions { edits.append(try parse(action)) }
            return edits
        case .object(let fields) where fields["actions"] != nil && fields["type"] == nil:
            return try parseList(fields["actions"]!)
        default:
            return [try parse(json)]
        }
    }

    public static func parse(_ json: JSONValue) throws(GraphError) -> GraphEdit {
        guard case .object(let action) = json else { throw .badEdit("an action must be an object, got \(json.typeName)") }
        guard case .string(let type)? = action["type"] else { throw .badEdit("an action needs a string 'type'") }
        guard case .object(let data)? = action["data"] else { throw .badEdit("action '\(type)' needs an object 'data'") }
        if let extra = action.keys.first(where: { $0 != "type" && $0 != "data" }) {
            throw .badEdit("action '\(type)': unexpected key '\(extra)'")
        }
        func string(_ key: String) throws(GraphError) -> String {
            guard case .string(let value)? = data[key] else { throw .badEdit("action '\(type)' needs a string '\(key)'") }
            return value
        }
        func only(_ keys: Set<String>) throws(GraphError) {
            if let extra = data.keys.sorted().first(where: { !keys.contains($0) }) {
                throw .badEdit("action '\(type)': unexpected key '\(extra)'")
            }
        }
        switch type {
        case "blockdev-add":
            return .addNode(.object(data))
        case "blockdev-del":
            try only(["node-name"])
            return .removeNode(try string("node-name"))
        case "insert-filter":
            try only(["above", "parent", "child", "filter"])
            guard let filter = data["filter"] else { throw .badEdit("action 'insert-filter' needs 'filter'") }
            if data["above"] != nil {
                guard data["parent"] == nil else { throw .badEdit("action 'insert-filter' takes 'above' or 'parent', not both") }
                return .insertFilterAbove(node: try string("above"), filter: filter)
            }
            let child: String? = data["child"] == nil ? nil : try string("child")
            return .insertFilterOnEdge(parent: try string("parent"), optionKey: child, filter: filter)
        case "remove-filter":
            try only(["node-name"])
            return .removeFilter(try string("node-name"))
        case "blockdev-replace":
            try only(["node-name", "with"])
            return .replace(node: try string("node-name"), with: try string("with"))
        case "blockdev-reopen":
            return .reopen(.object(data))
        case "backend-add":
            try only(["id", "node-name", "writable", "share-rw"])
            let writable = data["writable"] == nil || data["writable"] == .bool(true)
            let shareWrites = data["share-rw"] == .bool(true)
            return .addBackend(BackendEntry(name: try string("id"), nodeName: try string("node-name"), writable: writable, shareWrites: shareWrites))
        case "backend-del":
            try only(["id"])
            return .removeBackend(try string("id"))
        default:
            throw .badEdit("unknown action type '\(type)'")
        }
    }
}

extension GraphModel {
    /// Applies every edit to a copy and validates the result: the receiver never changes.
    public func applying(_ edits: [GraphEdit]) throws(GraphError) -> (GraphModel, [String: NodePermissions]) {
        var next = self
        for edit in edits {
            switch edit {
            case .addNode(let options): try next.addNode(options)
            case .addImplicitNode(let options): try next.addImplicitNode(options)
            case .removeNode(let name): try next.removeNode(name)
            case .insertFilterAbove(let node, let filter): _ = try next.insertFilter(above: node, filter: filter)
            case .insertFilterOnEdge(let parent, let key, let filter): _ = try next.insertFilter(onEdgeOf: parent, optionKey: key, filter: filter)
            case .removeFilter(let name): try next.removeFilter(name)
            case .replace(let node, let with): try next.replace(node, with: with)
            case .reopen(let options): try next.reopen(options)
            case .addBackend(let backend): try next.addBackend(backend)
            case .removeBackend(let name): try next.removeBackend(name)
            }
        }
        let permissions = try next.validated()
        return (next, permissions)
    }
}
