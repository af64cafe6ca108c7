import StrataGraph
import StrataRuntime

/// The daemon's vhost-user-blk exports, by id: added from the command line or QMP's
/// block-export-add, removed by block-export-del or at shutdown.
public final class VhostUserBlkServer: Sendable {
    let controller: GraphController
    private let logger: @Sendable (String) -> Void
    private let exports = Locked<[String: VhostUserBlkExport]>([:])

    public init(controller: GraphController, log: @escaping @Sendable (String) -> Void) {
        self.controller = controller
        self.logger = log
    }

    /// The exports in id order.
    public var all: [VhostUserBlkExport] { exports.withLock { $0.values.sorted { $0.options.id < $1.options.id } } }

    public func export(id: String) -> VhostUserBlkExport? { exports.withLock { $0[id] } }

    public func addExport(_ options: VhostUserBlkExportOptions) async throws {
        let export = VhostUserBlkExport(options: options, controller: controller, log: logger)
        let reserved = exports.withLock { exports in
            guard exports[options.id] == nil else { return false }
            exports[options.id] = export
            return true
        }
        guard reserved else { throw VhostUserExportError("an export with id '\(options.id)' exists already") }
        do { try await export.start() } catch {
            exports.withLock { _ = $0.removeValue(forKey: options.id) }
            throw error
        }
    }

    /// Disconnects the export's front end and removes it; false when there is no such export.
    @discardableResult
    public func removeExport(id: String) async -> Bool {
        guard let export = exports.withLock({ $0.removeValue(forKey: id) }) else { return false }
        await export.stop()
        return true
    }

    public func shutdown() async {
        for export in all { await removeExport(id: export.options.id) }
    }
}
