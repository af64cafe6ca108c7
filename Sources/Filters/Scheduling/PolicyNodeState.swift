import StrataGraph

/// A policy node's shared state: the one scheduler every queue's instance (and every parent) uses.
final class PolicyNodeState: NodeState, SingleChildFilterState {
    let nodeName: String
    let tenants: TenantOptions
    let scheduler: PolicyScheduler
    let driverName: String
    private let file: ChildLink
    private let child: ChildStateReference

    init<Policy>(nodeName: String, configuration: PolicyConfiguration<Policy>, child: any NodeState, nowNs: UInt64) {
        self.nodeName = nodeName
        self.driverName = Policy.driverName
        self.tenants = configuration.tenants
        self.scheduler = PolicyScheduler(policy: configuration.policy, maxInFlight: configuration.maxInFlight, nowNs: nowNs)
        self.file = configuration.file
        self.child = ChildStateReference(child)
    }

    /// A filter is as large as what it filters.
    var sizeBytes: UInt64 { child.current.sizeBytes }
    var filteredLink: ChildLink { file }
    var filteredChildState: any NodeState { child.current }

    func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(file.optionKey) { child.replace(with: newChild) }
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let childInstance = children.child(file.optionKey) else {
            preconditionFailure("\(driverName) node \(nodeName): no instance of child \(file.nodeName)")
        }
        return PolicyInstance(queue: queue, child: childInstance, state: self)
    }
}
