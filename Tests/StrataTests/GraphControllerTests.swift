import StrataEngine
import StrataGraph
import StrataNodes
import StrataRuntime
import Synchronization
import Testing

/// A minimal attachment: sends requests to whatever root its queue has installed.
actor TestAttachment: GraphAttachment {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    nonisolated let backendName: String
    nonisolated let queueIndex: Int
    private let root = VersionedRoot()
    private(set) var completed = 0
    private(set) var failed = 0
    private(set) var versionsSeen: Set<UInt64> = []

    init(queue: QueueContext, backend: String) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        backendName = backend
        queueIndex = queue.index
    }

    func install(_ version: GraphVersion) -> UInt64 {
        root.install(version)
        return MonotonicClock.now()
    }

    func drain(olderThan number: UInt64) async { await root.drain(olderThan: number) }

    func run(requests: Int) async {
        for _ in 0..<requests {
            let pinned = root.begin()!
            let version = pinned.takeUnretainedValue()
            versionsSeen.insert(version.number)
            let status = await version.root.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 512))
            root.end(pinned)
            if status.isOK { completed += 1 } else { failed += 1 }
            await Task.yield()
        }
    }
}

@Suite struct GraphControllerTests {
    func withEngine(queues: Int, _ body: (GraphController, TestNodeLog) async throws -> Void) async throws {
        let control = try QueueExecutor(name: "test-control")
        let contexts = try (0..<queues).map { QueueContext(index: $0, executor: try QueueExecutor(name: "test-q\($0)"), clock: MonotonicClock()) }
        let log = TestNodeLog()
        let controller = GraphController(registry: testRegistry(log: log), control: control, queues: contexts)
        try await body(controller, log)
        await controller.shutdown()
        for context in contexts { await context.executor.shutdown() }
        await control.shutdown()
    }

    func json(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    @Test func aFailedOpenLeavesTheGraphAsItWas() async throws {
        try await withEngine(queues: 1) { controller, log in
            try await controller.apply(json: json(#"[{"type":"blockdev-add","data":{"driver":"proto","node-name":"p"}}]"#))
            let before = await controller.currentVersion
            await #expect(throws: GraphError.self) {
                try await controller.apply(json: self.json(#"""
                [{"type":"blockdev-add","data":{"driver":"proto","node-name":"q"}},
                 {"type":"blockdev-add","data":{"driver":"broken","node-name":"z"}}]
                """#))
            }
            #expect(await controller.currentVersion == before)
            #expect(await controller.model.nodes.keys.sorted() == ["p"])
            // q was opened before z failed, and was closed again.
            #expect(log.closed.withLock { $0.contains("q") })
        }
    }

    @Test func permissionsReachTheNodesAndRemovedNodesAreClosed() async throws {
        try await withEngine(queues: 1) { controller, log in
            try await controller.apply(json: json(#"""
            [{"type":"blockdev-add","data":{"driver":"format","node-name":"f","file":{"driver":"proto","node-name":"p"}}},
             {"type":"backend-add","data":{"id":"d","node-name":"f"}}]
            """#))
            #expect(log.permissions.withLock { $0["p"] } == [.consistentRead, .write])
            try await controller.apply(json: json(#"{"type":"backend-del","data":{"id":"d"}}"#))
            try await controller.apply(json: json(#"[{"type":"blockdev-del","data":{"node-name":"f"}},{"type":"blockdev-del","data":{"node-name":"p"}}]"#))
            await controller.waitForRetirements()
            #expect(log.closed.withLock { Set($0) } == ["f", "p"])
        }
    }

    @Test func editsUnderLoadOnTwoQueuesLoseNoRequest() async throws {
        try await withEngine(queues: 2) { controller, log in
            try await controller.apply(json: json(#"""
            [{"type":"blockdev-add","data":{"driver":"format","node-name":"f","file":{"driver":"proto","node-name":"p"}}},
             {"type":"backend-add","data":{"id":"d","node-name":"f"}}]
            """#))
            let attachments = controller.queues.map { TestAttachment(queue: $0, backend: "d") }
            for attachment in attachments { try await controller.attach(attachment) }
            let perQueue = 20_000
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, attachment) in attachments.enumerated() {
                    group.addTask(executorPreference: controller.queues[index].executor) { await attachment.run(requests: perQueue) }
                }
                for round in 0..<10 {
                    try await controller.apply(json: self.json(#"{"type":"insert-filter","data":{"above":"p","filter":{"driver":"filter","node-name":"t\#(round)"}}}"#))
                    try await controller.apply(json: self.json(#"{"type":"remove-filter","data":{"node-name":"t\#(round)"}}"#))
                }
                try await group.waitForAll()
            }
            await controller.waitForRetirements()
            for attachment in attachments {
                #expect(await attachment.completed == perQueue)
                #expect(await attachment.failed == 0)
                #expect(await attachment.versionsSeen.count > 1)
                await controller.detach(attachment)
            }
            // Every inserted filter was closed once drained; the others stay open.
            #expect(log.closed.withLock { Set($0) } == Set((0..<10).map { "t\($0)" }))
            #expect(await controller.currentVersion == 21)
        }
    }

    @Test func aBackendInUseCannotBeRemoved() async throws {
        try await withEngine(queues: 1) { controller, _ in
            try await controller.apply(json: json(#"[{"type":"blockdev-add","data":{"driver":"proto","node-name":"p"}},{"type":"backend-add","data":{"id":"d","node-name":"p"}}]"#))
            let attachment = TestAttachment(queue: controller.queues[0], backend: "d")
            try await controller.attach(attachment)
            await #expect(throws: GraphError.inUse(node: "d", users: ["queue 0"])) {
                try await controller.apply(json: self.json(#"{"type":"backend-del","data":{"id":"d"}}"#))
            }
            await controller.detach(attachment)
        }
    }
}

/// Reopen through a transaction on a real driver: the file node's write cache toggles at runtime.
@Suite struct FileReopenTests {
    @Test func blockdevReopenTogglesWriteThroughAndRefusesOtherChanges() async throws {
        let harness = try NodeTestHarness("reopen")
        defer { harness.shutdown() }
        let image = try harness.createFile("disk.img", size: 1 << 20)
        let control = try QueueExecutor(name: "reopen-ctl")
        let queue = QueueContext(index: 0, executor: try QueueExecutor(name: "reopen-q0"), clock: MonotonicClock())
        let controller = GraphController(registry: DriverCatalog.registry, control: control, queues: [queue])
        try await controller.apply(json: JSONValue.parse(#"{"type":"blockdev-add","data":{"driver":"file","node-name":"f","filename":"\#(image)","cache":"writeback"}}"#))
        let state = try #require(try await controller.state(of: "f") as? FileNodeState)
        #expect(state.writeThrough == false)
        try await controller.apply(json: JSONValue.parse(#"{"type":"blockdev-reopen","data":{"driver":"file","node-name":"f","filename":"\#(image)","cache":"writethrough"}}"#))
        #expect(state.writeThrough == true)
        #expect(try await controller.state(of: "f") === state, "reopen keeps the open file")
        await #expect(throws: GraphError.self) {
            try await controller.apply(json: JSONValue.parse(#"{"type":"blockdev-reopen","data":{"driver":"file","node-name":"f","filename":"\#(image)","cache":"none"}}"#))
        }
        #expect(state.writeThrough == true, "a refused reopen changes nothing")
        await controller.shutdown()
        await queue.executor.shutdown()
        await control.shutdown()
    }
}
