import StrataFormatting
import StrataGraph
import StrataNodes

/// Dirty bitmaps: block-dirty-bitmap-add, -remove, -clear, -enable, -disable and -merge, with
/// QEMU's checks and texts. Each is also a transaction action (`BitmapAction`).
enum BitmapCommands {
    static let all: [QMPCommand] = BitmapAction.Kind.allCases.map { kind in
        QMPCommand(kind.rawValue) { monitor, arguments in
            let action = try BitmapAction.parse(kind, &arguments)
            let undo = try await action.prepare(monitor)
            await undo.commit()
            return .emptyObject
        }
    }
}

/// One bitmap command, prepared so that a transaction can still take it back.
struct BitmapAction: Sendable {
    enum Kind: String, CaseIterable, Sendable {
        case add = "block-dirty-bitmap-add"
        case remove = "block-dirty-bitmap-remove"
        case clear = "block-dirty-bitmap-clear"
        case enable = "block-dirty-bitmap-enable"
        case disable = "block-dirty-bitmap-disable"
        case merge = "block-dirty-bitmap-merge"
    }

    /// QEMU's BDRV_BITMAP_MAX_NAME_SIZE.
    static let maxNameBytes = 1023

    let kind: Kind
    let node: String
    let name: String
    var granularity: Int64?
    var persistent = false
    var disabled = false
    /// merge's sources, as (node, name).
    var sources: [(node: String, name: String)] = []

    static func parse(_ kind: Kind, _ arguments: inout QMPArguments) throws(QMPError) -> BitmapAction {
        let node = try arguments.string("node")
        let name = try arguments.string(kind == .merge ? "target" : "name")
        var action = BitmapAction(kind: kind, node: node, name: name)
        switch kind {
        case .add:
            action.granularity = try arguments.optionalInteger("granularity")
            if let granularity = action.granularity, !(0...Int64(UInt32.max)).contains(granularity) {
                throw QMPError("Parameter 'granularity' expects uint32_t")
            }
            action.persistent = try arguments.optionalBool("persistent") ?? false
            action.disabled = try arguments.optionalBool("disabled") ?? false
        case .merge:
            for source in try arguments.array("bitmaps") {
                switch source {
                case .string(let sourceName): action.sources.append((node, sourceName))
                case .object(let fields):
                    guard case .string(let sourceNode)? = fields["node"], case .string(let sourceName)? = fields["name"], fields.count == 2 else {
                        throw QMPError("Invalid parameter type for 'bitmaps', expected: BlockDirtyBitmapOrStr")
                    }
                    action.sources.append((sourceNode, sourceName))
                default:
                    throw QMPError("Invalid parameter type for 'bitmaps', expected: BlockDirtyBitmapOrStr")
                }
            }
        default: break
        }
        try arguments.finish()
        return action
    }

    /// What a prepared action still has to do, or undo.
    struct Prepared: Sendable {
        let onCommit: @Sendable () async -> Void
        let onAbort: @Sendable () async -> Void

        init(commit: @escaping @Sendable () async -> Void, abort: @escaping @Sendable () async -> Void) {
            onCommit = commit
            onAbort = abort
        }

        func commit() async { await onCommit() }
        func abort() async { await onAbort() }
    }

    /// Checks and does the action as far as it can be taken back.
    func prepare(_ monitor: isolated QMPMonitor) async throws(QMPError) -> Prepared {
        let controller = monitor.daemon.engine.controller
        if kind == .add {
            guard !name.isEmpty else { throw QMPError("Bitmap name cannot be empty") }
        }
        let model = await controller.model
        guard model.nodes[node] != nil else { throw QMPError("Cannot find device='\(node)' nor node-name='\(node)'") }
        if kind == .add { return try await prepareAdd(controller) }
        guard let bitmap = await controller.dirtyBitmap(node: node, name: name) else { throw QMPError("Dirty bitmap '\(name)' not found") }
        let node = node
        switch kind {
        case .add:
            preconditionFailure("handled above")
        case .remove:
            if let refusal = bitmap.refusal(allowInconsistent: true) { throw QMPError(refusal) }
            // Hidden from the request path at once; gone for good at commit.
            await controller.setRecording(bitmap, false, on: node)
            let wasRecording = bitmap.isEnabled
            return Prepared(commit: { await controller.removeDirtyBitmap(bitmap, from: node) },
                            abort: { await controller.setRecording(bitmap, wasRecording, on: node) })
        case .clear:
            if let refusal = bitmap.refusal() { throw QMPError(refusal) }
            let old = await controller.clear(bitmap)
            return Prepared(commit: {}, abort: { await controller.restoreBits(bitmap, old) })
        case .enable, .disable:
            if let refusal = bitmap.refusal() { throw QMPError(refusal) }
            let before = bitmap.isEnabled
            await controller.setRecording(bitmap, kind == .enable, on: node)
            return Prepared(commit: {}, abort: { await controller.setRecording(bitmap, before, on: node) })
        case .merge:
            if let refusal = bitmap.refusal() { throw QMPError(refusal) }
            var others: [DirtyBitmap] = []
            for source in sources {
                guard model.nodes[source.node] != nil else {
                    throw QMPError("Cannot find device='\(source.node)' nor node-name='\(source.node)'")
                }
                guard let other = await controller.dirtyBitmap(node: source.node, name: source.name) else {
                    throw QMPError("Dirty bitmap '\(source.name)' not found")
                }
                if other.isInconsistent, let refusal = other.refusal() { throw QMPError(refusal) }
                others.append(other)
            }
            let old = bitmap.bits.copy()
            for other in others { bitmap.bits.merge(other.bits) }
            return Prepared(commit: {}, abort: {
                bitmap.bits.clearAll()
                bitmap.bits.merge(old)
            })
        }
    }

    private func prepareAdd(_ controller: GraphController) async throws(QMPError) -> Prepared {
        let state: any NodeState
        do { state = try await controller.state(of: node) } catch { throw QMPError("\(error)") }
        let granularity: UInt64
        if let given = self.granularity {
            guard given >= 512, given & (given - 1) == 0 else { throw QMPError("Granularity must be power of 2 and at least 512") }
            granularity = UInt64(given)
        } else {
            // QEMU's bdrv_get_default_bitmap_granularity: the cluster size within [4 KiB, 64 KiB],
            // 64 KiB for drivers without clusters.
            let cluster = (state as? Qcow2NodeState).map { UInt64($0.clusterSize) } ?? 0
            granularity = cluster > 0 ? min(65536, max(4096, cluster)) : 65536
        }
        if persistent {
            guard let store = state as? any DirtyBitmapStore else {
                throw QMPError("Can't store persistent bitmaps to \(node): Operation not supported")
            }
            if let refusal = store.refusalToStore(name: name, granularity: granularity) {
                throw QMPError("Can't make bitmap '\(name)' persistent in '\(node)': \(refusal)")
            }
        }
        if await controller.dirtyBitmap(node: node, name: name) != nil { throw QMPError("Bitmap already exists: \(name)") }
        guard name.utf8.count <= Self.maxNameBytes else { throw QMPError("Bitmap name too long: \(name)") }
        let bitmap = DirtyBitmap(name: name, sizeBytes: state.sizeBytes, granularity: granularity, recording: !disabled, persistent: persistent)
        do { try await controller.addDirtyBitmap(bitmap, to: node) } catch { throw QMPError("\(error)") }
        let node = node
        return Prepared(commit: {}, abort: { await controller.removeDirtyBitmap(bitmap, from: node) })
    }
}

extension QMPMonitor {
    /// BlockDirtyInfo for each of a node's bitmaps, newest first, as query-named-block-nodes lists them.
    static func dirtyBitmapInfo(_ bitmaps: [DirtyBitmap]) -> OrderedJSON {
        .array(bitmaps.map { bitmap in
            var fields: [(String, OrderedJSON)] = []
            if let name = bitmap.name { fields.append(("name", .string(name))) }
            fields += [("recording", .bool(bitmap.isRecording)), ("persistent", .bool(bitmap.isPersistent)), ("busy", .bool(bitmap.isBusy)),
                       ("granularity", .uint(bitmap.granularity)), ("count", .uint(bitmap.dirtyBytes))]
            if bitmap.isInconsistent { fields.append(("inconsistent", .bool(true))) }
            return .object(fields)
        })
    }
}
