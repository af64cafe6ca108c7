import StrataFormatting
import StrataGraph
import StrataNBDServer
import StrataVhostUserServer

/// The NBD server and exports: nbd-server-start/stop, nbd-server-add/remove (QEMU's older
/// forms), block-export-add/del (NBD and vhost-user-blk exports), query-block-exports, with
/// BLOCK_EXPORT_DELETED on removal.
enum ExportCommands {
    static let all: [QMPCommand] = [
        QMPCommand("nbd-server-start") { monitor, arguments in
            let address = try arguments.object("addr")
            _ = try arguments.optionalInteger("max-connections")
            if try arguments.optionalString("tls-creds") != nil { throw QMPError("TLS is not supported by this NBD server") }
            try arguments.finish()
            let server = monitor.daemon.nbdServer
            guard !server.isListening else { throw QMPError("NBD server already running") }
            _ = try server.listen(on: try Self.legacyAddress(address))
            return .emptyObject
        },
        QMPCommand("nbd-server-stop") { monitor, arguments in
            try arguments.finish()
            let server = monitor.daemon.nbdServer
            guard server.isListening else { throw QMPError("NBD server not running") }
            await server.stopListening()
            return .emptyObject
        },
        QMPCommand("block-export-add") { monitor, arguments in
            let type = try arguments.string("type")
            if type == "vhost-user-blk" {
                try await monitor.addVhostUserExport(&arguments)
                return .emptyObject
            }
            guard type == "nbd" else { throw QMPError("Parameter 'type' does not accept value '\(type)'") }
            let id = try arguments.string("id")
            let node = try arguments.string("node-name")
            let writable = try arguments.optionalBool("writable") ?? false
            let name = try arguments.optionalString("name")
            let description = try arguments.optionalString("description") ?? ""
            let allocationDepth = try arguments.optionalBool("allocation-depth") ?? false
            let bitmaps = try arguments.optionalArray("bitmaps") ?? []
            _ = try arguments.optionalBool("writethrough")
            let tenantTag = try Self.tenantTag(&arguments)
            try arguments.finish()
            let bitmapNames = try bitmaps.map { value throws(QMPError) -> String in
                // BlockDirtyBitmapOrStr: a name, or {node, name} (found the same way here).
                switch value {
                case .string(let name): return name
                case .object(let fields):
                    guard case .string(let name)? = fields["name"] else { throw QMPError("Parameter 'bitmaps' expects BlockDirtyBitmapOrStr") }
                    return name
                default: throw QMPError("Parameter 'bitmaps' expects BlockDirtyBitmapOrStr")
                }
            }
            var options = NBDExportOptions(id: id, nodeName: node, name: name, description: description, writable: writable,
                                           allocationDepth: allocationDepth, bitmaps: bitmapNames)
            options.tenantTag = tenantTag
            try await monitor.addNBDExport(options)
            return .emptyObject
        },
        QMPCommand("nbd-server-add") { monitor, arguments in
            let device = try arguments.string("device")
            let name = try arguments.optionalString("name") ?? device
            let writable = try arguments.optionalBool("writable") ?? false
            let description = try arguments.optionalString("description") ?? ""
            try arguments.finish()
            try await monitor.addNBDExport(NBDExportOptions(id: name, nodeName: device, name: name, description: description, writable: writable,
                                                            allocationDepth: false))
            return .emptyObject
        },
        QMPCommand("block-export-del") { monitor, arguments in
            let id = try arguments.string("id")
            let mode = try Self.removeMode(try arguments.optionalString("mode"))
            try arguments.finish()
            if monitor.daemon.vhostUserServer.export(id: id) != nil {
                await monitor.removeVhostUserExport(id: id)
                return .emptyObject
            }
            try monitor.removeNBDExport(id: id, mode: mode)
            return .emptyObject
        },
        QMPCommand("nbd-server-remove") { monitor, arguments in
            let name = try arguments.string("name")
            let mode = try Self.removeMode(try arguments.optionalString("mode"))
            try arguments.finish()
            try monitor.removeNBDExport(id: name, mode: mode)
            return .emptyObject
        },
        QMPCommand("query-block-exports") { monitor, arguments in
            try arguments.finish()
            let model = await monitor.daemon.engine.controller.model
            let nbd: [OrderedJSON] = monitor.daemon.nbdServer.exportOptions.map { export in
                .object([("type", .string("nbd")), ("id", .string(export.id)),
                         ("node-name", .string(Self.exportedNode(id: export.id, node: export.nodeName, model: model))),
                         ("shutting-down", .bool(false))])
            }
            let vhostUser: [OrderedJSON] = monitor.daemon.vhostUserServer.all.map { export in
                .object([("type", .string("vhost-user-blk")), ("id", .string(export.options.id)),
                         ("node-name", .string(Self.exportedNode(id: export.options.id, node: export.options.nodeName, model: model))),
                         ("shutting-down", .bool(false))])
            }
            return .array(nbd + vhostUser)
        },
    ]

    /// The node an export serves now (a mirror's pivot moves it), as QEMU names its root: past
    /// implicit filters (`#blockN`, which a job inserts) to the node under them.
    static func exportedNode(id: String, node: String, model: GraphModel) -> String {
        guard var name = model.backends[id]?.nodeName else { return node }
        while name.hasPrefix("#"), let entry = model.nodes[name], entry.isFilter, let child = entry.children.first?.nodeName {
            name = child
        }
        return name
    }

    /// SocketAddressLegacy: `{"type": "unix", "data": {"path": P}}` or `{"type": "inet", "data":
    /// {"host": H, "port": P}}`.
    static func legacyAddress(_ address: [String: JSONValue]) throws(QMPError) -> NBDServerAddress {
        var outer = QMPArguments(address)
        let type = try outer.string("type")
        var data = QMPArguments(try outer.object("data"))
        try outer.finish()
        switch type {
        case "unix":
            let path = try data.string("path")
            _ = try data.optionalBool("abstract")
            try data.finish()
            return .unix(path: path)
        case "inet":
            let host = try data.string("host")
            let port = try data.string("port")
            for key in ["numeric", "to", "ipv4", "ipv6", "keep-alive"] { _ = data.value(key) }
            try data.finish()
            guard let number = UInt16(port) else { throw QMPError("Invalid port '\(port)'") }
            return .inet(host: host, port: number)
        default:
            throw QMPError("Parameter 'type' does not accept value '\(type)'")
        }
    }

    /// Strata's `x-tenant` on block-export-add: the tag the export's requests carry for a
    /// scheduling policy below (a vhost-user-blk export's virtqueue i carries x-tenant + i).
    static func tenantTag(_ arguments: inout QMPArguments) throws(QMPError) -> UInt32 {
        guard let tag = try arguments.optionalInteger("x-tenant") else { return 0 }
        guard let value = UInt32(exactly: tag) else { throw QMPError("Parameter 'x-tenant' must be between 0 and \(UInt32.max), got \(tag)") }
        return value
    }

    static func removeMode(_ text: String?) throws(QMPError) -> NBDServer.RemoveMode {
        guard let text else { return .safe }
        guard let mode = NBDServer.RemoveMode(rawValue: text) else { throw QMPError("Parameter 'mode' does not accept value '\(text)'") }
        return mode
    }
}

extension QMPMonitor {
    func addNBDExport(_ options: NBDExportOptions) async throws {
        let server = daemon.nbdServer
        guard server.isListening else { throw QMPError("NBD server not running") }
        guard await daemon.engine.controller.model.nodes[options.nodeName] != nil else {
            throw QMPError("Cannot find device=\(options.nodeName) nor node_name=\(options.nodeName)")
        }
        if server.exportOptions.contains(where: { $0.id == options.id }) {
            throw QMPError("Block export id '\(options.id)' is already in use")
        }
        do { try await server.addExport(options) } catch { throw QMPError("\(error)") }
    }

    func removeNBDExport(id: String, mode: NBDServer.RemoveMode) throws {
        do {
            try daemon.nbdServer.removeExport(id: id, mode: mode) { [weak self] in
                await self?.emit(QMPEvent("BLOCK_EXPORT_DELETED", data: .object([("id", .string(id))])))
            }
        } catch {
            throw QMPError("Export '\(id)' is not found")
        }
    }
}

extension QMPMonitor {
    /// block-export-add's BlockExportOptionsVhostUserBlk: addr (a SocketAddress, unix only),
    /// writable, num-queues, logical-block-size.
    func addVhostUserExport(_ arguments: inout QMPArguments) async throws {
        let id = try arguments.string("id")
        let node = try arguments.string("node-name")
        var address = QMPArguments(try arguments.object("addr"))
        let writable = try arguments.optionalBool("writable") ?? false
        _ = try arguments.optionalBool("writethrough")
        let queueCount = try arguments.optionalInteger("num-queues") ?? 1
        let blockSize = try arguments.optionalInteger("logical-block-size") ?? 512
        let tenantTag = try ExportCommands.tenantTag(&arguments)
        try arguments.finish()
        let type = try address.string("type")
        guard type == "unix" else { throw QMPError("vhost-user-blk export '\(id)': addr type '\(type)' is not supported; use unix") }
        let path = try address.string("path")
        _ = try address.optionalBool("abstract")
        try address.finish()
        guard await daemon.engine.controller.model.nodes[node] != nil else {
            throw QMPError("Cannot find device=\(node) nor node_name=\(node)")
        }
        if daemon.vhostUserServer.export(id: id) != nil || daemon.nbdServer.exportOptions.contains(where: { $0.id == id }) {
            throw QMPError("Block export id '\(id)' is already in use")
        }
        var options = VhostUserBlkExportOptions(id: id, nodeName: node, socketPath: path, writable: writable, queueCount: Int(queueCount),
                                                logicalBlockSize: Int(blockSize))
        options.tenantTagBase = tenantTag
        if let problem = options.problem { throw QMPError(problem) }
        do { try await daemon.vhostUserServer.addExport(options) } catch { throw QMPError("\(error)") }
    }

    func removeVhostUserExport(id: String) async {
        guard await daemon.vhostUserServer.removeExport(id: id) else { return }
        await emit(QMPEvent("BLOCK_EXPORT_DELETED", data: .object([("id", .string(id))])))
    }
}
