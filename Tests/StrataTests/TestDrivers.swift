import StrataGraph
import StrataRuntime
import Synchronization

/// Small drivers for testing the graph layer without real I/O: they keep counts of opens, closes
/// and requests so a test sees what the controller did.
final class TestNodeLog: Sendable {
    let opened = Locked<[String]>([])
    let closed = Locked<[String]>([])
    let permissions = Locked<[String: Permissions]>([:])
}

struct TestConfiguration: NodeConfiguration {
    let children: [ChildLink]
    let readOnly: Bool
    let failOpen: Bool
    let log: TestNodeLog
    let exclusiveWriter: Bool

    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        exclusiveWriter ? ([.consistentRead, .write], [.consistentRead]) : (parentsTake, parentsShare)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        if failOpen { throw SystemError("open \(name)", errno: 5) }
        log.opened.withLock { $0.append(name) }
        return TestState(name: name, log: log)
    }
}

final class TestState: NodeState {
    let name: String
    let log: TestNodeLog
    let requests = Atomic<Int>(0)
    init(name: String, log: TestNodeLog) { self.name = name; self.log = log }
    var sizeBytes: UInt64 { 1 << 20 }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        TestInstance(queue: queue, child: children.values.first?.node, state: self)
    }

    func applyPermissions(take: Permissions, share: Permissions) async throws {
        log.permissions.withLock { $0[name] = take }
    }

    func prepareReopen(_ configuration: any NodeConfiguration) throws(GraphError) -> (@Sendable () -> Void) { {} }

    func close() async { log.closed.withLock { $0.append(name) } }
}

actor TestInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let child: (any BlockNode)?
    let state: TestState

    init(queue: QueueContext, child: (any BlockNode)?, state: TestState) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.state = state
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        state.requests.add(1, ordering: .relaxed)
        if let child { return await child.submit(request) }
        return .ok
    }
}

func testRegistry(log: TestNodeLog) -> DriverRegistry {
    func descriptor(_ name: String, filter: Bool = false, childKeys: [(String, ChildRole)] = [], readOnlyOption: Bool = false,
                    failOpen: Bool = false, exclusive: Bool = false) -> DriverDescriptor {
        DriverDescriptor(name: name, isFilter: filter) { (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
            var children: [ChildLink] = []
            for (key, role) in childKeys { children.append(try reader.child(key, role: role)) }
            let readOnly = readOnlyOption ? try reader.bool("read-only", default: false) : false
            _ = try reader.optionalInteger("size", range: 0...(1 << 50))
            return TestConfiguration(children: children, readOnly: readOnly, failOpen: failOpen, log: log, exclusiveWriter: exclusive)
        }
    }
    return DriverRegistry([
        descriptor("proto", readOnlyOption: true),
        descriptor("format", childKeys: [("file", .file)], readOnlyOption: true),
        descriptor("layered", childKeys: [("file", .file), ("backing", .backing)]),
        descriptor("filter", filter: true, childKeys: [("file", .filtered)]),
        descriptor("broken", failOpen: true),
        descriptor("exclusive", childKeys: [("file", .file)], exclusive: true),
    ])
}
