/// Why a graph edit or an option was refused. Every case names the node, edge, permission or
/// option at fault, in QEMU's wording where QEMU has one.
public enum GraphError: Error, Equatable, CustomStringConvertible {
    case badJSON(String)
    case unknownDriver(String)
    case missingOption(node: String, option: String)
    case badOption(node: String, option: String, reason: String)
    case unexpectedOption(node: String, option: String)
    case duplicateName(String)
    case badNodeName(String)
    case noSuchNode(String)
    case noSuchBackend(String)
    case missingChild(node: String, role: ChildRole, child: String)
    case cycle(path: [String])
    case inUse(node: String, users: [String])
    case notAFilter(String)
    case permissionConflict(node: String, user: String, role: String, permission: Permissions, blockedBy: String)
    case readOnly(node: String, user: String)
    case badEdit(String)
    case openFailed(node: String, reason: String)

    public var description: String {
        switch self {
        case .badJSON(let text): text
        case .unknownDriver(let driver): "Unknown driver '\(driver)'"
        case .missingOption(let node, let option): "\(node): Parameter '\(option)' is missing"
        case .badOption(let node, let option, let reason): "\(node): Parameter '\(option)' \(reason)"
        case .unexpectedOption(let node, let option): "\(node): Parameter '\(option)' is unexpected"
        case .duplicateName(let name): "Duplicate node name '\(name)'"
        case .badNodeName(let name): "Invalid node-name: '\(name)'"
        case .noSuchNode(let name): "Cannot find node '\(name)'"
        case .noSuchBackend(let name): "Cannot find block backend '\(name)'"
        case .missingChild(let node, let role, let child): "\(node): child '\(child)' for role '\(role.rawValue)' does not exist"
        case .cycle(let path): "Making a cycle: \(path.joined(separator: " -> "))"
        case .inUse(let node, let users): "Node '\(node)' is in use by \(users.joined(separator: ", "))"
        case .notAFilter(let node): "Node '\(node)' is not a filter with exactly one filtered child"
        case .permissionConflict(let node, let user, let role, let permission, let blockedBy):
            "Conflicts with use by \(blockedBy) on node '\(node)': '\(user)' as '\(role)' needs '\(permission)', which \(blockedBy) does not share"
        case .readOnly(let node, let user): "Node '\(node)' is read-only: '\(user)' needs write"
        case .badEdit(let text): text
        case .openFailed(let node, let reason): "Could not open node '\(node)': \(reason)"
        }
    }
}
