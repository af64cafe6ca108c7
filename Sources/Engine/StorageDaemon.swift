import StrataGraph
import StrataNBDServer
import StrataRuntime
import StrataVhostUserServer

/// qemu-storage-daemon's job put together in one place: an engine, a graph built from blockdev-add
/// actions, and the exports over it. The command line turns its options into a `Plan`; the daemon
/// assembles and runs it, and a control plane will change it later through the same engine.
public final class StorageDaemon: Sendable {
    /// One `--nbd-server`: where to listen, and the connection limit (0: none).
    public struct NBDListener: Sendable {
        public var address: NBDServerAddress
        public var maxConnections: Int

        public init(address: NBDServerAddress, maxConnections: Int = 0) {
            precondition(maxConnections >= 0, "a connection limit is a count")
            self.address = address
            self.maxConnections = maxConnections
        }
    }

    /// Everything the daemon serves, as the command line gave it.
    public struct Plan: Sendable {
        public var queueCount: Int
        public var blockdevActions: [JSONValue]
        public var nbdListeners: [NBDListener]
        public var nbdExports: [NBDExportOptions]
        public var vhostUserExports: [VhostUserBlkExportOptions]
        public var handshakeLimitSeconds: Double
        /// CPUs the queue executors are pinned to, in turn (nil: queue i on CPU i mod online CPUs).
        public var cpus: [Int]?
        /// How long an idle queue spins on its ring before it sleeps (0: never).
        public var pollMaxNs: UInt64 = 0

        public init(queueCount: Int, blockdevActions: [JSONValue], nbdListeners: [NBDListener], nbdExports: [NBDExportOptions],
                    vhostUserExports: [VhostUserBlkExportOptions] = [], handshakeLimitSeconds: Double = 10) {
            self.queueCount = queueCount
            self.blockdevActions = blockdevActions
            self.nbdListeners = nbdListeners
            self.nbdExports = nbdExports
            self.vhostUserExports = vhostUserExports
            self.handshakeLimitSeconds = handshakeLimitSeconds
        }
    }

    public let engine: Engine
    public let nbdServer: NBDServer
    public let vhostUserServer: VhostUserBlkServer
    private let plan: Plan

    public init(plan: Plan, log: @escaping @Sendable (String) -> Void) throws {
        precondition(plan.queueCount >= 1, "a daemon needs a queue")
        precondition(plan.handshakeLimitSeconds >= 0, "a handshake limit is a duration")
        self.plan = plan
        engine = try Engine(queueCount: plan.queueCount, cpus: plan.cpus, pollMaxNs: plan.pollMaxNs)
        var settings = NBDServer.Settings()
        settings.handshakeLimitSeconds = plan.handshakeLimitSeconds
        settings.maxConnections = plan.nbdListeners.map(\.maxConnections).max() ?? 0
        nbdServer = NBDServer(controller: engine.controller, settings: settings, log: log)
        vhostUserServer = VhostUserBlkServer(controller: engine.controller, log: log)
    }

    /// Builds the graph, adds the exports and starts listening; returns the bound addresses (a
    /// port 0 resolved). On failure everything started is shut down before the error is thrown.
    public func start() async throws -> [NBDServerAddress] {
        do {
            if !plan.blockdevActions.isEmpty { try await engine.controller.apply(json: .array(try Self.withBackingChains(plan.blockdevActions))) }
            for export in plan.nbdExports { try await nbdServer.addExport(export) }
            for export in plan.vhostUserExports { try await vhostUserServer.addExport(export) }
            return try plan.nbdListeners.map { try nbdServer.listen(on: $0.address) }
        } catch {
            await shutdown()
            throw error
        }
    }

    /// The blockdev-add actions with each qcow2 node's backing chain opened by name where the
    /// node names none, looking up file nodes among the actions before it.
    static func withBackingChains(_ actions: [JSONValue]) throws -> [JSONValue] {
        var byName: [String: [String: JSONValue]] = [:]
        return try actions.map { action in
            guard case .object(var fields) = action, fields["type"] == .string("blockdev-add"), case .object(let data)? = fields["data"] else {
                return action
            }
            let expanded = try ImplicitBackingChain.expand(data) { byName[$0] }
            if case .string(let name)? = data["node-name"] { byName[name] = data }
            fields["data"] = .object(expanded)
            return .object(fields)
        }
    }

    /// Stops reading requests, answers what was read, flushes writable exports, then stops the engine.
    public func shutdown() async {
        await vhostUserServer.shutdown()
        await nbdServer.shutdown()
        await engine.shutdown()
    }
}
