import StrataFormatting
import StrataGraph
import StrataImageTools

/// External snapshots: blockdev-snapshot-sync (a new qcow2 overlay over a node, created and
/// opened) and blockdev-snapshot (an overlay the client added, given the node as backing); then
/// every user of the node uses the overlay. Each is one graph transaction, and a transaction
/// action (`SnapshotAction`).
enum SnapshotCommands {
    static let all: [QMPCommand] = [
        QMPCommand("blockdev-snapshot-sync") { monitor, arguments in
            let action = try SnapshotAction.parseSync(&arguments)
            let edits = try await action.prepare(monitor)
            if !edits.isEmpty { try await monitor.apply(edits) }
            return .emptyObject
        },
        QMPCommand("blockdev-snapshot") { monitor, arguments in
            let action = try SnapshotAction.parse(&arguments)
            try await monitor.apply(try await action.prepare(monitor))
            return .emptyObject
        },
    ]
}

/// One external snapshot, as the graph edits that take it.
struct SnapshotAction: Sendable {
    enum Kind: Sendable {
        /// blockdev-snapshot-sync: create (mode absolute-paths) or open (mode existing) this file.
        case sync(file: String, nodeName: String?, format: String, existing: Bool)
        /// blockdev-snapshot: this node, added already, without a backing.
        case overlay(String)
    }

    let node: String
    let kind: Kind

    static func parseSync(_ arguments: inout QMPArguments) throws(QMPError) -> SnapshotAction {
        let device = try arguments.optionalString("device")
        let nodeName = try arguments.optionalString("node-name")
        let file = try arguments.string("snapshot-file")
        let snapshotName = try arguments.optionalString("snapshot-node-name")
        let format = try arguments.optionalString("format") ?? "qcow2"
        let mode = try arguments.optionalString("mode") ?? "absolute-paths"
        try arguments.finish()
        guard mode == "absolute-paths" || mode == "existing" else { throw QMPError("Parameter 'mode' does not accept value '\(mode)'") }
        guard let node = nodeName ?? device else { throw QMPError("Cannot find device='' nor node-name=''") }
        return SnapshotAction(node: node, kind: .sync(file: file, nodeName: snapshotName, format: format, existing: mode == "existing"))
    }

    static func parse(_ arguments: inout QMPArguments) throws(QMPError) -> SnapshotAction {
        let node = try arguments.string("node")
        let overlay = try arguments.string("overlay")
        try arguments.finish()
        return SnapshotAction(node: node, kind: .overlay(overlay))
    }

    /// QEMU's external_snapshot_prepare checks; creates the overlay file for blockdev-snapshot-sync
    /// (left in place if the transaction fails later, as QEMU leaves it). Returns the edits.
    func prepare(_ monitor: isolated QMPMonitor) async throws(QMPError) -> [GraphEdit] {
        let controller = monitor.daemon.engine.controller
        let model = await controller.model
        guard let entry = model.nodes[node] else { throw QMPError("Cannot find device='\(node)' nor node-name='\(node)'") }
        switch kind {
        case .sync(let file, let snapshotName, let format, let existing):
            guard format == "qcow2" else { throw QMPError("Strata creates snapshot overlays in qcow2 only, not '\(format)'") }
            if let snapshotName, model.nodes[snapshotName] != nil { throw QMPError("Duplicate nodes with node-name='\(snapshotName)'") }
            if !existing {
                let size: UInt64
                do { size = try await controller.state(of: node).sizeBytes } catch { throw QMPError("\(error)") }
                var options = Qcow2CreateOptions(sizeBytes: size)
                options.backingFile = QMPMonitor.filename(of: node, model: model)
                options.backingFormat = entry.driver
                do { try await Qcow2Creator.create(path: file, options: options) } catch { throw QMPError("Could not create '\(file)': \(error)") }
            }
            // As QEMU's: the overlay belongs to the node's parents, and a node nobody uses leaves
            // just the file (QEMU drops an overlay no parent took).
            guard !model.users(of: node).isEmpty else { return [] }
            let added = snapshotName ?? "#snapshot-\(node)"
            let overlay: [String: JSONValue] = ["driver": .string(format), "node-name": .string(added),
                                                "file": ["driver": "file", "filename": .string(file)], "backing": .string(node)]
            return [.addImplicitNode(.object(overlay)), .replace(node: node, with: added)]
        case .overlay(let overlay):
            guard let overlayEntry = model.nodes[overlay] else { throw QMPError("Cannot find device='\(overlay)' nor node-name='\(overlay)'") }
            guard overlayEntry.driver == "qcow2" else { throw QMPError("The overlay does not support backing images") }
            if overlayEntry.children.contains(where: { $0.role == .backing }) {
                throw QMPError("The overlay already has a backing image")
            }
            if let user = model.users(of: overlay).first { throw QMPError("The overlay is already in use: \(user)") }
            var options = overlayEntry.options
            options["backing"] = .string(node)
            options["node-name"] = .string(overlay)
            options["driver"] = .string(overlayEntry.driver)
            return [.reopen(.object(options)), .replace(node: node, with: overlay)]
        }
    }
}
