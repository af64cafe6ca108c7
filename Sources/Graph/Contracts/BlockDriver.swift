import StrataRuntime

/// A driver as the registry knows it: a name and a parser from options to a configuration.
/// Adding a driver is one file defining its descriptor plus one registration line.
public struct DriverDescriptor: Sendable {
    public let name: String
    /// A filter has exactly one filtered child and forwards by default (throttle, copy-on-read).
    public let isFilter: Bool
    /// The filename prefixes a protocol driver claims (`nbd://`, later `rbd:`, `iscsi://`), as QEMU's
    /// `protocol_name`: a tool given such a filename opens it with this driver's `filename` option.
    public let filenamePrefixes: [String]
    public let parse: @Sendable (inout OptionReader) throws(GraphError) -> any NodeConfiguration

    public init(name: String, isFilter: Bool = false, filenamePrefixes: [String] = [],
                parse: @escaping @Sendable (inout OptionReader) throws(GraphError) -> any NodeConfiguration) {
        precondition(!name.isEmpty, "a driver needs a name")
        precondition(!(isFilter && !filenamePrefixes.isEmpty), "filter \(name) cannot claim filename prefixes")
        precondition(filenamePrefixes.allSatisfy { $0.count > 1 && ($0.hasSuffix(":") || $0.hasSuffix("://")) },
                     "driver \(name): a filename prefix ends in ':' or '://'")
        self.name = name
        self.isFilter = isFilter
        self.filenamePrefixes = filenamePrefixes
        self.parse = parse
    }
}

/// A node's validated options: its child edges, the permissions it needs on them, and how to open it.
public protocol NodeConfiguration: Sendable {
    var children: [ChildLink] { get }
    /// The node refuses writers (`read-only` option, or a driver that cannot write).
    var readOnly: Bool { get }
    /// What this node takes and shares on the child in `link`, given the union of what its own
    /// parents take (`parentsTake`) and the intersection of what they share (`parentsShare`).
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions)
    /// Opens the node's shared state on the control executor; children are already open.
    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState
}

extension NodeConfiguration {
    public var readOnly: Bool { false }

    /// QEMU's default for filters and formats: pass the parents' needs down unchanged.
    public func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake, parentsShare)
    }
}

/// What a node open needs from the engine: the control executor (blocking calls go through its
/// ring), the clock, and the named objects nodes share (throttle groups).
public struct OpenContext: Sendable {
    public let controlExecutor: QueueExecutor
    public let clock: any IOClock
    public let sharedObjects: SharedObjects

    public init(controlExecutor: QueueExecutor, clock: any IOClock, sharedObjects: SharedObjects) {
        self.controlExecutor = controlExecutor
        self.clock = clock
        self.sharedObjects = sharedObjects
    }
}

/// A node's state shared by all queues, kept across graph versions while the node stays in the
/// graph (file descriptors, throttle budgets, statistics). Touched rarely; per-request work happens in
/// the per-queue instances it makes.
public protocol NodeState: AnyObject, Sendable {
    /// The node's current size in bytes.
    var sizeBytes: UInt64 { get }
    /// Builds this node's instance for one queue, bound to that queue's executor, over the
    /// children's instances for the same queue. I/O to a child goes through its handle, which
    /// accounts it to the child.
    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode
    /// Applies the permissions the graph now takes and shares on this node (file locks). Throws when
    /// another process holds a conflicting lock; the transaction then aborts.
    func applyPermissions(take: Permissions, share: Permissions) async throws
    /// Prepares a reopen with new options of the same driver; the returned action commits it.
    func prepareReopen(_ configuration: any NodeConfiguration) throws(GraphError) -> (@Sendable () -> Void)
    /// The graph pointed some of this node's child edges at other nodes (a filter inserted or
    /// removed below it, a child replaced); options are otherwise unchanged.
    func relink(children: [ChildLink: any NodeState])
    /// Releases resources once no queue can reach the node any more.
    func close() async
}

extension NodeState {
    public func applyPermissions(take: Permissions, share: Permissions) async throws {}
    public func prepareReopen(_ configuration: any NodeConfiguration) throws(GraphError) -> (@Sendable () -> Void) {
        throw .badEdit("driver does not support reopen")
    }
    public func relink(children: [ChildLink: any NodeState]) {}
    public func close() async {}
}
