import StrataGraph
import Synchronization

/// A throttle node's shared state: its membership in a throttle group, kept across graph versions.
final class ThrottleNodeState: NodeState {
    let nodeName: String
    let group: ThrottleGroup
    let member: ThrottleGroup.Member
    private let file: ChildLink
    private let child: ChildStateReference
    private let sharedObjects: SharedObjects
    /// Close may be called once per node; a second call must not remove a later group of the same name.
    private let closed = Atomic<Bool>(false)

    private init(nodeName: String, group: ThrottleGroup, member: ThrottleGroup.Member, file: ChildLink,
                 child: any NodeState, sharedObjects: SharedObjects) {
        self.nodeName = nodeName
        self.group = group
        self.member = member
        self.file = file
        self.child = ChildStateReference(child)
        self.sharedObjects = sharedObjects
    }

    /// Joins (or creates) the group and applies the node's limits to it.
    static func open(nodeName: String, configuration: ThrottleConfiguration, child: any NodeState,
                     context: OpenContext) async throws -> ThrottleNodeState {
        let groupName = configuration.resolvedGroupName(nodeName: nodeName)
        let key = ThrottleFilter.sharedObjectName(group: groupName)
        // A group whose last member is closing is retired and then removed by that member, with no
        // suspension in between; waiting a few turns is enough to see it gone.
        for _ in 0..<10_000 {
            var created = false
            let group = try context.sharedObjects.object(named: key, as: ThrottleGroup.self) {
                created = true
                return ThrottleGroup(name: groupName, limits: configuration.limits ?? .unlimited, clock: context.clock)
            }
            guard let member = group.register() else {
                await Task.yield()
                continue
            }
            // Limits equal to the group's leave its buckets alone: re-applying would empty them
            // and hand out a fresh burst allowance.
            if !created, let limits = configuration.limits, limits != group.limits {
                group.setLimits(limits)
            }
            return ThrottleNodeState(nodeName: nodeName, group: group, member: member, file: configuration.file,
                                     child: child, sharedObjects: context.sharedObjects)
        }
        throw GraphError.openFailed(node: nodeName, reason: "throttle group '\(groupName)' is being torn down")
    }

    /// A filter is as large as what it filters.
    var sizeBytes: UInt64 { child.current.sizeBytes }

    func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(file.optionKey) { child.replace(with: newChild) }
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let childInstance = children.child(file.optionKey) else { preconditionFailure("throttle node \(nodeName): no instance of child \(file.nodeName)") }
        return ThrottleInstance(queue: queue, child: childInstance, group: group, member: member)
    }

    /// New limits take effect at commit; the group and child stay (changing them would move queued
    /// requests between groups).
    func prepareReopen(_ configuration: any NodeConfiguration) throws(GraphError) -> (@Sendable () -> Void) {
        guard let new = configuration as? ThrottleConfiguration else {
            throw .badEdit("Node '\(nodeName)': cannot change the driver of a throttle node")
        }
        guard new.file == file else {
            throw .badEdit("Node '\(nodeName)': cannot change option 'file' of a throttle node on reopen")
        }
        guard new.resolvedGroupName(nodeName: nodeName) == group.name else {
            throw .badEdit("Node '\(nodeName)': cannot change option 'throttle-group' on reopen")
        }
        guard let limits = new.limits else { return {} }
        return { [group] in
            if group.limits != limits { group.setLimits(limits) }
        }
    }

    func close() async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        // The last member removes the group, so a later node of that name starts afresh.
        if group.unregister(member) {
            sharedObjects.remove(named: ThrottleFilter.sharedObjectName(group: group.name))
        }
    }
}
