import StrataRuntime

/// What one applied transaction did and how long it took.
public struct TransactionReport: Sendable {
    public let version: UInt64
    /// From the start of the transaction until every queue had switched.
    public let applyNs: UInt64
    /// Monotonic time each attachment switched, by queue index then backend.
    public let switchTimesNs: [(queue: Int, backend: String, timeNs: UInt64)]
    public let addedNodes: [String]
    public let removedNodes: [String]
}

/// Owns the graph on the control executor. A transaction is validated whole on a copy of the
/// graph value, new nodes are opened, and only then does each queue get a "switch to version N"
/// message; nothing changes unless everything validated and opened. No queue waits for another,
/// and the data path takes no lock: each queue swaps one pointer between two requests.
public actor GraphController {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    public nonisolated let control: QueueExecutor
    public nonisolated let queues: [QueueContext]
    public nonisolated let sharedObjects = SharedObjects()
    public private(set) var model: GraphModel
    private var states: [String: any NodeState] = [:]
    private var permissions: [String: NodePermissions] = [:]
    /// Per node, per queue statistics; nil when accounting is off.
    private var accounting: [String: NodeAccounting]?
    /// Each node's dirty bitmaps, newest first (QMP lists them so).
    var dirtyBitmaps: [String: [DirtyBitmap]] = [:]
    private var attachments: [any GraphAttachment] = []
    private var versionNumber: UInt64 = 0
    private var retirements: [Task<Void, Never>] = []
    private var switchesOutstanding = 0
    private var collectedSwitches: [(queue: Int, backend: String, timeNs: UInt64)] = []
    private var switchesDone: CheckedContinuation<Void, Never>?
    private let clock: any IOClock
    /// Transactions and attachments one at a time: `apply` suspends (opening nodes, waiting for
    /// queues to switch) and the actor would otherwise interleave a second one with it, computing
    /// both from the same graph value and losing one's switches.
    private let transactionLock = AsyncLock()

    public init(registry: DriverRegistry, control: QueueExecutor, queues: [QueueContext], clock: any IOClock = MonotonicClock(),
                accounting: Bool = true) {
        self.accounting = accounting ? [:] : nil
        self.control = control
        self.unownedExecutor = control.asUnownedSerialExecutor()
        self.queues = queues
        self.model = GraphModel(registry: registry)
        self.clock = clock
    }

    /// The shared state of a node, for control-path calls (statistics, resize, runtime toggles).
    public func state(of name: String) throws(GraphError) -> any NodeState {
        guard let state = states[name] else { throw .noSuchNode(name) }
        return state
    }

    public var currentVersion: UInt64 { versionNumber }

    public var isAccounting: Bool { accounting != nil }

    /// A node's statistics summed over queues; nil when accounting is off.
    public func statistics(of name: String) throws(GraphError) -> NodeStatsSnapshot? {
        guard model.nodes[name] != nil else { throw .noSuchNode(name) }
        return accounting?[name]?.snapshot()
    }

    /// Every node's statistics, by name; empty when accounting is off.
    public func statisticsOfAllNodes() -> [(name: String, driver: String, stats: NodeStatsSnapshot)] {
        guard let accounting else { return [] }
        return model.nodes.keys.sorted().compactMap { name in
            accounting[name].map { (name, model.nodes[name]!.driver, $0.snapshot()) }
        }
    }

    /// A node's accounting, to change its custom latency histograms.
    public func accounting(of name: String) throws(GraphError) -> NodeAccounting? {
        guard model.nodes[name] != nil else { throw .noSuchNode(name) }
        return accounting?[name]
    }

    /// The size a backend's root node has now.
    public func backendSizeBytes(_ backend: String) throws(GraphError) -> UInt64 {
        guard let entry = model.backends[backend] else { throw .noSuchBackend(backend) }
        return try state(of: entry.nodeName).sizeBytes
    }

    /// One line per backend: its chain of nodes, top to bottom, with drivers and extra children.
    public func describe() -> [String] {
        model.backends.values.sorted { $0.name < $1.name }.map { backend in
            var parts = [backend.name]
            var next: String? = backend.nodeName
            while let name = next, let node = model.nodes[name] {
                let others = node.children.dropFirst().map { "\($0.optionKey)=\($0.nodeName)" }
                parts.append("\(name) (\(node.driver)\(others.isEmpty ? "" : "; " + others.joined(separator: ", ")))")
                next = node.children.first?.nodeName
            }
            return parts.joined(separator: " -> ")
        }
    }

    /// Applies a transaction: all of it or, on any error, none of it.
    @discardableResult
    public func apply(_ edits: [GraphEdit]) async throws -> TransactionReport {
        await transactionLock.lock()
        defer { transactionLock.unlock() }
        let startNs = clock.nowNs
        let (next, nextPermissions) = try model.applying(edits)
        for attachment in attachments where next.backends[attachment.backendName] == nil {
            throw GraphError.inUse(node: attachment.backendName, users: ["queue \(attachment.queueIndex)"])
        }
        let added = next.nodes.keys.filter { model.nodes[$0] == nil }
        let removed = model.nodes.keys.filter { next.nodes[$0] == nil }
        // A node whose only change is where its child edges point is relinked, not reopened.
        var reopened: [String] = []
        var relinked: [String] = []
        for (name, new) in next.nodes {
            guard let old = model.nodes[name], old.options != new.options else { continue }
            let childKeys = Set((old.children + new.children).map(\.optionKey))
            if old.options.filter({ !childKeys.contains($0.key) }) == new.options.filter({ !childKeys.contains($0.key) }) {
                relinked.append(name)
            } else {
                reopened.append(name)
            }
        }

        var opened: [String: any NodeState] = [:]
        func unwindOpened() async { for state in opened.values { await state.close() } }
        let context = OpenContext(controlExecutor: control, clock: clock, sharedObjects: sharedObjects)
        for name in next.bottomUpOrder() where added.contains(name) {
            let entry = next.nodes[name]!
            var children: [ChildLink: any NodeState] = [:]
            for link in entry.children { children[link] = opened[link.nodeName] ?? states[link.nodeName] }
            do {
                opened[name] = try await entry.configuration.open(name: name, children: children, context: context)
            } catch {
                await unwindOpened()
                throw error is GraphError ? error : GraphError.openFailed(node: name, reason: "\(error)")
            }
        }

        var commits: [@Sendable () -> Void] = []
        for name in reopened.sorted() where states[name] != nil {
            do {
                commits.append(try states[name]!.prepareReopen(next.nodes[name]!.configuration))
            } catch {
                await unwindOpened()
                throw error
            }
        }

        // Permissions (file locks): apply the new sums; on failure put back the ones already changed.
        var changed: [(name: String, old: NodePermissions)] = []
        for name in next.bottomUpOrder() {
            let new = nextPermissions[name] ?? .unused
            let old = permissions[name] ?? .unused
            guard let state = opened[name] ?? states[name], new != old || opened[name] != nil else { continue }
            do {
                try await state.applyPermissions(take: new.take, share: new.share)
                changed.append((name, old))
            } catch {
                for (changedName, old) in changed.reversed() where opened[changedName] == nil {
                    try? await states[changedName]?.applyPermissions(take: old.take, share: old.share)
                }
                await unwindOpened()
                throw GraphError.openFailed(node: name, reason: "\(error)")
            }
        }

        // Point of no return: everything validated, opened and locked.
        assert(Set(opened.keys) == Set(added), "every added node is open before the commit, and nothing else was opened")
        assert(next.nodes.keys.allSatisfy { opened[$0] != nil || states[$0] != nil }, "every node of the new graph has a state")
        for commit in commits { commit() }
        for name in relinked.sorted() {
            var children: [ChildLink: any NodeState] = [:]
            for link in next.nodes[name]!.children { children[link] = opened[link.nodeName] ?? states[link.nodeName] }
            states[name]?.relink(children: children)
        }
        // Parents close before their children: a format writes back its metadata through its file.
        let retiredStates = model.bottomUpOrder().reversed().filter(removed.contains).compactMap { states[$0] }
        for name in removed {
            states[name] = nil
            accounting?[name] = nil
            dirtyBitmaps[name] = nil
        }
        states.merge(opened) { _, new in new }
        for (name, state) in opened {
            // Loaded in directory order, each becoming the newest, as QEMU lists them; from now on
            // this controller's handles mark them.
            if let store = state as? any DirtyBitmapStore {
                if !store.storedBitmaps.isEmpty { dirtyBitmaps[name] = store.storedBitmaps.reversed() }
                store.track(dirtyBitmaps[name] ?? [])
            }
        }
        if accounting != nil {
            for name in added { accounting?[name] = NodeAccounting(queues: queues) }
        }
        assert(Set(states.keys) == Set(next.nodes.keys), "node states match the committed graph")
        model = next
        permissions = nextPermissions
        versionNumber += 1
        let switches = await distribute(version: versionNumber)
        let version = versionNumber
        let current = attachments
        retirements.append(Task {
            for attachment in current { await attachment.drain(olderThan: version) }
            for state in retiredStates { await state.close() }
        })
        return TransactionReport(version: version, applyNs: clock.nowNs - startNs, switchTimesNs: switches,
                                 addedNodes: added.sorted(), removedNodes: removed.sorted())
    }

    /// Returns once every request that started on any queue before the call has completed, without
    /// stopping new ones: every attachment switches to a new version of the same graph, and the
    /// old versions drain (what QEMU's drained sections give a resize, minus the stall).
    public func barrier() async {
        await transactionLock.lock()
        defer { transactionLock.unlock() }
        versionNumber += 1
        let version = versionNumber
        _ = await distribute(version: version)
        for attachment in attachments { await attachment.drain(olderThan: version) }
    }

    /// Parses and applies a transaction given as JSON (one action, an array, or `{"actions": [...]}`).
    @discardableResult
    public func apply(json: JSONValue) async throws -> TransactionReport {
        try await apply(try GraphEdit.parseList(json))
    }

    /// Attaches a device queue or export connection and installs its backend's current root.
    public func attach(_ attachment: any GraphAttachment) async throws {
        await transactionLock.lock()
        defer { transactionLock.unlock() }
        precondition(!attachments.contains { $0 === attachment }, "\(attachment.backendName) on queue \(attachment.queueIndex) attached twice")
        precondition(attachment.queueIndex >= 0 && attachment.queueIndex < queues.count, "queue \(attachment.queueIndex) does not exist")
        let version = try makeVersion(for: attachment, number: versionNumber)
        attachments.append(attachment)
        _ = await attachment.install(version)
    }

    public func detach(_ attachment: any GraphAttachment) {
        attachments.removeAll { $0 === attachment }
    }

    /// Waits until every node removed by earlier transactions has been closed.
    public func waitForRetirements() async {
        let pending = retirements
        retirements.removeAll()
        for task in pending { await task.value }
    }

    /// Closes every node; call after all attachments are detached and idle.
    public func shutdown() async {
        await waitForRetirements()
        for name in model.bottomUpOrder().reversed() {
            if let state = states[name] { await state.close() }
        }
        states.removeAll()
    }

    // MARK: Private

    private func makeVersion(for attachment: any GraphAttachment, number: UInt64) throws(GraphError) -> GraphVersion {
        guard let backend = model.backends[attachment.backendName] else { throw .noSuchBackend(attachment.backendName) }
        var memo: [String: NodeHandle] = [:]
        let root = instance(backend.nodeName, queue: queues[attachment.queueIndex], memo: &memo)
        return GraphVersion(number: number, root: root)
    }

    /// One handle per node per version and queue: a node under two parents is one instance.
    private func instance(_ name: String, queue: QueueContext, memo: inout [String: NodeHandle]) -> NodeHandle {
        if let built = memo[name] { return built }
        var children: [ChildLink: NodeHandle] = [:]
        for link in model.nodes[name]!.children { children[link] = instance(link.nodeName, queue: queue, memo: &memo) }
        let stats = accounting.map { table in
            guard let node = table[name] else { preconditionFailure("node \(name) has no accounting") }
            return node.perQueue[queue.index]
        }
        let marks = DirtyMarks(dirtyBitmaps[name]?.compactMap(\.recordingTarget) ?? [])
        let built = NodeHandle(states[name]!.makeInstance(queue: queue, children: children), stats: stats, dirtyMarks: marks)
        memo[name] = built
        return built
    }

    /// Sends each attachment its new root; all queues switch concurrently, none waits for another.
    ///
    /// Each message goes from a task isolated to this controller, so the reply comes straight back
    /// to the control executor. (A task-group child would resume as a generic job on the busy queue
    /// thread that ran `install`, and wait there behind the queue's requests: measured 6-8 ms.)
    private func distribute(version: UInt64) async -> [(queue: Int, backend: String, timeNs: UInt64)] {
        precondition(switchesDone == nil && switchesOutstanding == 0, "one version is distributed at a time (transactionLock)")
        var prepared: [(any GraphAttachment, GraphVersion)] = []
        for attachment in attachments {
            guard let built = try? makeVersion(for: attachment, number: version) else { continue }
            prepared.append((attachment, built))
        }
        guard !prepared.isEmpty else { return [] }
        switchesOutstanding = prepared.count
        collectedSwitches = []
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            switchesDone = continuation
            for (attachment, built) in prepared {
                Task { await self.send(built, to: attachment) }
            }
        }
        return collectedSwitches.sorted { ($0.queue, $0.backend) < ($1.queue, $1.backend) }
    }

    private func send(_ version: GraphVersion, to attachment: any GraphAttachment) async {
        let timeNs = await attachment.install(version)
        collectedSwitches.append((attachment.queueIndex, attachment.backendName, timeNs))
        switchesOutstanding -= 1
        if switchesOutstanding == 0 {
            switchesDone?.resume()
            switchesDone = nil
        }
    }
}
