import Glibc
import StrataEngine
import StrataFormatting
import StrataGraph
import StrataJobs
import StrataNodes

/// Nodes: blockdev-add, blockdev-del, blockdev-reopen, block_resize, query-named-block-nodes.
enum BlockdevCommands {
    static let all: [QMPCommand] = [
        QMPCommand("blockdev-add") { monitor, arguments in
            // The arguments are the node's options; its driver reads and checks every one.
            guard case .string? = arguments.all["node-name"] else { throw QMPError("'node-name' must be specified for the root node") }
            let model = await monitor.daemon.engine.controller.model
            let options: [String: JSONValue]
            do {
                options = try ImplicitBackingChain.expand(arguments.all) { model.nodes[$0]?.options }
            } catch {
                throw QMPError("\(error)")
            }
            try await monitor.apply([.addNode(.object(options))])
            return .emptyObject
        },
        QMPCommand("blockdev-del") { monitor, arguments in
            let name = try arguments.string("node-name")
            try arguments.finish()
            let model = await monitor.daemon.engine.controller.model
            guard model.nodes[name] != nil else { throw QMPError("Failed to find node with node-name='\(name)'") }
            guard !name.hasPrefix("#"), model.nodes[name]?.ownedByParent != true else { throw QMPError("Node \(name) is not owned by the monitor") }
            if let user = model.users(of: name).first {
                throw QMPError("Node '\(name)' is busy: node is used as \(user)")
            }
            try await monitor.apply(Self.removal(of: name, model: model))
            // As QEMU, the node is closed (its metadata written back) when the command returns.
            await monitor.daemon.engine.controller.waitForRetirements()
            return .emptyObject
        },
        QMPCommand("blockdev-reopen") { monitor, arguments in
            let options = try arguments.array("options")
            try arguments.finish()
            guard !options.isEmpty else { throw QMPError("Parameter 'options' must not be empty") }
            try await monitor.apply(options.map { GraphEdit.reopen($0) })
            return .emptyObject
        },
        QMPCommand("block_resize") { monitor, arguments in
            let device = try arguments.optionalString("device")
            let nodeName = try arguments.optionalString("node-name")
            let size = try arguments.integer("size")
            try arguments.finish()
            guard let name = nodeName ?? device else { throw QMPError("Cannot find device='' nor node-name=''") }
            guard size >= 0 else { throw QMPError("Parameter 'size' expects a >0 size") }
            try await monitor.resize(node: name, to: UInt64(size))
            return .emptyObject
        },
        QMPCommand("query-named-block-nodes") { monitor, arguments in
            _ = try arguments.optionalBool("flat")
            try arguments.finish()
            let model = await monitor.daemon.engine.controller.model
            var infos: [OrderedJSON] = []
            for name in model.nodes.keys.sorted() {
                infos.append(await monitor.blockDeviceInfo(name, model: model))
            }
            return .array(infos)
        },
    ]
}

extension BlockdevCommands {
    /// The node and, after it, the implicit nodes (`#blockN`: inline children, a backing chain
    /// opened by name) that only it used, as QEMU drops them with their last parent.
    static func removal(of name: String, model: GraphModel) -> [GraphEdit] {
        var edits: [GraphEdit] = [.removeNode(name)]
        var removed: Set<String> = [name]
        var pending = model.nodes[name]?.children.map(\.nodeName) ?? []
        while let child = pending.first {
            pending.removeFirst()
            guard let entry = model.nodes[child], child.hasPrefix("#") || entry.ownedByParent, !removed.contains(child) else { continue }
            // Only when every user of the child is going too.
            guard model.users(of: child).allSatisfy({ removed.contains($0.name) }) else { continue }
            removed.insert(child)
            edits.append(.removeNode(child))
            pending += entry.children.map(\.nodeName)
        }
        return edits
    }
}

extension QMPMonitor {
    /// Applies graph edits as one transaction, with errors as QMP reports them; an edit of a node
    /// a job uses is refused as the op-blocker table says.
    func apply(_ edits: [GraphEdit]) async throws {
        for edit in edits {
            for (operation, node) in Self.operations(of: edit) { try await checkBlockers(operation, on: node) }
        }
        do {
            try await daemon.engine.controller.apply(edits)
        } catch let error as GraphError {
            throw QMPError("\(error)")
        }
    }

    /// What an edit does to which existing nodes, for the op blockers.
    static func operations(of edit: GraphEdit) -> [(NodeOperation, String)] {
        switch edit {
        case .addNode, .addImplicitNode, .addBackend, .removeBackend: return []
        case .removeNode(let name): return [(.delete, name)]
        case .insertFilterAbove(let node, _): return [(.filterEdit, node)]
        case .insertFilterOnEdge(let parent, _, _): return [(.filterEdit, parent)]
        case .removeFilter(let name): return [(.filterEdit, name)]
        case .replace(let node, let with): return [(.replace, node), (.replace, with)]
        case .reopen(let options):
            guard case .string(let name)? = options.objectValue?["node-name"] else { return [] }
            return [(.reopen, name)]
        }
    }

    /// QEMU's BlockDeviceInfo for one node: name, driver, read-only, the file it ends in, its
    /// backing depth and cache mode, and a short ImageInfo.
    func blockDeviceInfo(_ name: String, model: GraphModel) async -> OrderedJSON {
        guard let entry = model.nodes[name] else { return .null }
        let readOnly = entry.options["read-only"] == .bool(true)
        let size = (try? await daemon.engine.controller.state(of: name).sizeBytes) ?? 0
        let filename = Self.filename(of: name, model: model)
        var depth: Int64 = 0
        var backing = entry.children.first { $0.role == .backing }?.nodeName
        let backingName = backing.map { Self.filename(of: $0, model: model) }
        while let next = backing, depth < 1000 {
            depth += 1
            backing = model.nodes[next]?.children.first { $0.role == .backing }?.nodeName
        }
        let cache = entry.options["cache"]?.objectValue
        let direct = cache?["direct"] == .bool(true)
        let noFlush = cache?["no-flush"] == .bool(true)
        var image: [(String, OrderedJSON)] = [
            ("virtual-size", .uint(size)), ("filename", .string(filename)), ("format", .string(entry.driver)),
        ]
        var status = stat()
        if filename.hasPrefix("/"), stat(filename, &status) == 0 {
            image.append(("actual-size", .int(Int64(status.st_blocks) * 512)))
            image.append(("dirty-flag", .bool(false)))
        } else {
            image.append(("actual-size", .int(0)))
        }
        if let backingName { image.append(("backing-filename", .string(backingName))) }
        var info: [(String, OrderedJSON)] = [
            ("iops_rd", .int(0)), ("detect_zeroes", .string("off")), ("image", .object(image)), ("iops_wr", .int(0)),
            ("ro", .bool(readOnly)), ("node-name", .string(name)), ("backing_file_depth", .int(depth)), ("drv", .string(entry.driver)),
            ("iops", .int(0)), ("bps_wr", .int(0)), ("write_threshold", .int(0)),
        ]
        let bitmaps = await daemon.engine.controller.dirtyBitmaps(of: name)
        if !bitmaps.isEmpty { info.append(("dirty-bitmaps", Self.dirtyBitmapInfo(bitmaps))) }
        info += [
            ("encrypted", .bool(false)), ("bps", .int(0)), ("bps_rd", .int(0)),
            ("cache", .object([("no-flush", .bool(noFlush)), ("direct", .bool(direct)), ("writeback", .bool(true))])),
            ("file", .string(filename)),
        ]
        if let backingName { info.append(("backing_file", .string(backingName))) }
        return .object(info)
    }

    /// The name QEMU shows for a node's data: a protocol node's own filename, else the filename of
    /// the child it is stored in (`file`, or a filter's filtered child).
    static func filename(of name: String, model: GraphModel) -> String {
        var current = name
        for _ in 0..<64 {
            guard let entry = model.nodes[current] else { break }
            if case .string(let file)? = entry.options["filename"] { return file }
            if entry.driver == "null-co" || entry.driver == "null-aio" { return nullFilename(entry) }
            if entry.driver == "nbd", let server = entry.options["server"]?.objectValue {
                let export = entry.options["export"].flatMap { if case .string(let text) = $0 { text } else { nil } } ?? ""
                if case .string(let path)? = server["path"] { return "nbd+unix:///\(export)?socket=\(path)" }
                if case .string(let host)? = server["host"] {
                    let port = server["port"].flatMap { if case .string(let text) = $0 { text } else { nil } } ?? "10809"
                    return "nbd://\(host):\(port)/\(export)"
                }
            }
            guard let child = entry.children.first(where: { $0.role == .file || $0.role == .filtered }) else { break }
            current = child.nodeName
        }
        return ""
    }

    /// QEMU's name for a null node: `null-co://` with default options, else a `json:` filename
    /// of the options that change what it reads (bdrv_refresh_filename).
    static func nullFilename(_ entry: NodeEntry) -> String {
        let strong = entry.options.filter { !["node-name", "read-only", "auto-read-only", "discard", "cache", "driver"].contains($0.key) }
        guard !strong.isEmpty else { return "\(entry.driver)://" }
        let fields: [(String, OrderedJSON)] = [("driver", .string(entry.driver))] + strong.keys.sorted().map { key in
            let value = strong[key]!
            if case .string(let text) = value, let number = Int64(text) { return (key, .int(number)) }
            return (key, value.ordered)
        }
        return "json:" + OrderedJSON.object(fields).compactText()
    }

    /// block_resize: a `file` or `rbd` node, or a `raw` node over one, changes size at once (requests in
    /// flight see the old or the new size, as with QEMU's truncate under I/O); a `qcow2` node
    /// resizes its image live (Qcow2NodeState+Resize), a shrink waiting for the requests in
    /// flight past the new end through the controller's barrier.
    func resize(node name: String, to sizeBytes: UInt64) async throws {
        try await checkBlockers(.resize, on: name)
        let controller = daemon.engine.controller
        let model = await controller.model
        guard var entry = model.nodes[name] else { throw QMPError("Cannot find device='' nor node-name='\(name)'", class: .genericError) }
        if entry.driver == "qcow2", let state = try? await controller.state(of: name) as? Qcow2NodeState {
            do {
                try await state.resize(to: sizeBytes, executor: daemon.engine.control) { await controller.barrier() }
            } catch {
                throw QMPError("\(error)")
            }
            await controller.refitBitmaps()
            return
        }
        if entry.driver == "raw" {
            guard entry.options["offset"] == nil, entry.options["size"] == nil,
                  let file = entry.children.first(where: { $0.role == .file }), let fileEntry = model.nodes[file.nodeName] else {
                throw QMPError("Cannot resize raw node '\(name)' with 'offset' or 'size'")
            }
            entry = fileEntry
        }
        guard let state = try? await daemon.engine.controller.state(of: entry.name) as? any ResizableNodeState else {
            throw QMPError("Image format '\(entry.driver)' of node '\(name)' does not support live resizing yet")
        }
        do { try await state.resize(to: sizeBytes) } catch { throw QMPError("Could not resize: \(error)") }
        await controller.refitBitmaps()
    }
}
