import StrataGraph
import StrataRuntime

/// A throttle group made on its own, as QEMU's `--object throttle-group,id=ID,limits.*=...` and
/// QMP `object-add` make one: it exists before any throttle node names it and outlives them, since
/// the object holds a membership of its own. `delete` gives that membership up; the group then
/// retires with its last node, as a group made by a node does.
public final class ThrottleGroupObject: Sendable {
    public let id: String
    public let group: ThrottleGroup
    private let member: ThrottleGroup.Member
    private let sharedObjects: SharedObjects

    /// Makes group `id` with `limits` (QEMU's ThrottleLimits keys). Refused when a group of that
    /// name exists, whoever made it.
    public init(id: String, limits: [String: JSONValue], sharedObjects: SharedObjects, clock: any IOClock) throws(GraphError) {
        guard ThrottleConfiguration.isWellFormedID(id) else { throw .badEdit("Invalid object id '\(id)'") }
        var reader = OptionReader(nodeName: id, options: limits)
        let parsed = try ThrottleLimits(parsing: &reader)
        try reader.finish()
        let key = ThrottleFilter.sharedObjectName(group: id)
        var created = false
        let group: ThrottleGroup
        do {
            group = try sharedObjects.object(named: key, as: ThrottleGroup.self) {
                created = true
                return ThrottleGroup(name: id, limits: parsed, clock: clock)
            }
        } catch {
            throw .badEdit("attempt to add duplicate property '\(id)' to object (type 'container')")
        }
        guard created, let member = group.register() else {
            throw .badEdit("attempt to add duplicate property '\(id)' to object (type 'container')")
        }
        self.id = id
        self.group = group
        self.member = member
        self.sharedObjects = sharedObjects
    }

    /// Whether throttle nodes are members besides the object itself.
    public var isInUse: Bool { group.memberCount > 1 }

    /// Gives up the object's membership; the group goes once no node uses it.
    public func delete() {
        if group.unregister(member) { sharedObjects.remove(named: ThrottleFilter.sharedObjectName(group: id)) }
    }
}
