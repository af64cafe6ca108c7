import StrataGraph

/// An rbd node's validated options.
struct RbdNodeConfiguration: NodeConfiguration {
    private(set) var location: RbdLocation
    let readOnly: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        if let filename = try reader.optionalString("filename") {
            for key in ["pool", "image", "namespace", "snapshot", "conf", "user", "server"] where reader.has(key) {
                throw reader.bad(key, "cannot be combined with 'filename'")
            }
            location = try RbdLocation(filename: filename, nodeName: reader.nodeName)
        } else {
            location = try RbdLocation(parsing: &reader)
        }
        // QEMU's rbd driver: a direct cache mode (BDRV_O_NOCACHE) turns librbd's client cache off.
        if try Self.cacheIsDirect(&reader) { location.settings.append((key: "rbd_cache", value: "false")) }
        // A snapshot is read-only, as in QEMU.
        readOnly = try reader.bool("read-only", default: false) || location.snapshot != nil
        _ = try reader.optionalString("aio")
        _ = reader.raw("discard")
        _ = reader.raw("detect-zeroes")
        _ = reader.raw("auto-read-only")
        try reader.finish()
    }

    /// Whether `cache` asks for direct I/O: blockdev-add's {"direct": true}, the flat
    /// `cache.direct`, or -drive's mode names none and directsync.
    private static func cacheIsDirect(_ reader: inout OptionReader) throws(GraphError) -> Bool {
        var direct = false
        switch reader.raw("cache") {
        case nil, .null?:
            break
        case .string(let mode)?:
            guard ["none", "off", "directsync", "writeback", "writethrough", "unsafe"].contains(mode) else {
                throw reader.bad("cache", "expects a cache mode name or an object, got '\(mode)'")
            }
            direct = mode == "none" || mode == "off" || mode == "directsync"
        case .object(let fields)?:
            var group = OptionReader(nodeName: reader.nodeName, options: Dictionary(uniqueKeysWithValues: fields.map { ("cache." + $0.key, $0.value) }))
            direct = try group.bool("cache.direct", default: false)
            _ = try group.bool("cache.no-flush", default: false)
            try group.finish()
        case let other?:
            throw reader.bad("cache", "expects a cache mode name or an object, got \(other.typeName)")
        }
        if reader.has("cache.direct") { direct = try reader.bool("cache.direct", default: false) }
        _ = try reader.bool("cache.no-flush", default: false)
        return direct
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        var location = location
        // QEMU's qemu_rbd_set_auth: the secret, in base64, is librados's `key`.
        if let secret = location.keySecret { location.settings.append((key: "key", value: try SecretObject.lookup(secret, in: context.sharedObjects).base64)) }
        do {
            let connection = try await RbdConnection.open(location, readOnly: readOnly)
            do {
                return RbdNodeState(nodeName: name, connection: connection, readOnly: readOnly, sizeBytes: try await connection.sizeBytes())
            } catch {
                await connection.close()
                throw error
            }
        } catch let error as RbdError {
            throw GraphError.openFailed(node: name, reason: error.description)
        }
    }
}
