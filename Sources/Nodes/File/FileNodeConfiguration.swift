import StrataGraph

/// The validated options of a file node. The size is not an option: it comes from fstat.
struct FileNodeConfiguration: NodeConfiguration {
    let filename: String
    let cache: FileCacheSettings
    let readOnly: Bool
    let locking: FileLocking
    /// `discard=unmap`: discards punch holes and write-zeroes may deallocate. QEMU's default is
    /// `ignore`: discards succeed doing nothing.
    let unmapOnDiscard: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        filename = try reader.string("filename")
        if filename.isEmpty { throw reader.bad("filename", "must not be empty") }
        cache = try Self.parseCache(&reader)
        readOnly = try reader.bool("read-only", default: false)
        let lockingName = try reader.choice("locking", allowed: FileLocking.allCases.map(\.rawValue), default: FileLocking.auto.rawValue)
        locking = FileLocking(rawValue: lockingName) ?? .auto
        let aio = try reader.optionalString("aio") ?? "io_uring"
        if aio != "io_uring" {
            throw reader.bad("aio", "supports only 'io_uring' (every request goes through the queue's ring), got '\(aio)'")
        }
        // "on"/"off" are QEMU's older spellings (bdrv_parse_discard_flags).
        let discard = try reader.choice("discard", allowed: ["ignore", "unmap", "off", "on"], default: "ignore")
        unmapOnDiscard = discard == "unmap" || discard == "on"
        try reader.finish()
    }

    /// `cache` is either a QEMU mode name (-drive's cache=none) or blockdev-add's object
    /// {"direct", "no-flush"}; the flat keys `cache.direct`/`cache.no-flush` (and -drive's
    /// `cache.writeback`) are accepted too. As in QEMU, a mode only sets defaults that explicit
    /// switches override.
    private static func parseCache(_ reader: inout OptionReader) throws(GraphError) -> FileCacheSettings {
        var settings = FileCacheSettings.writeback
        var group: OptionReader?
        switch reader.raw("cache") {
        case nil, .null?:
            break
        case .string(let mode)?:
            guard let parsed = FileCacheSettings(mode: mode) else {
                throw reader.bad("cache", "expects one of \(FileCacheSettings.modeNames.joined(separator: ", ")), got '\(mode)'")
            }
            settings = parsed
        case .object(let fields)?:
            // Prefixed keys, so errors inside the group name the option as the user knows it.
            group = OptionReader(nodeName: reader.nodeName,
                                 options: Dictionary(uniqueKeysWithValues: fields.map { ("cache." + $0.key, $0.value) }))
        case let other?:
            throw reader.bad("cache", "expects a cache mode name or an object, got \(other.typeName)")
        }
        if var nested = group {
            settings = try applySwitches(&nested, to: settings)
            try nested.finish()
        }
        return try applySwitches(&reader, to: settings)
    }

    private static func applySwitches(_ reader: inout OptionReader, to base: FileCacheSettings) throws(GraphError) -> FileCacheSettings {
        var settings = base
        if let direct = try optionalBool(&reader, "cache.direct") { settings.direct = direct }
        if let noFlush = try optionalBool(&reader, "cache.no-flush") { settings.noFlush = noFlush }
        if let writeback = try optionalBool(&reader, "cache.writeback") { settings.writeThrough = !writeback }
        return settings
    }

    private static func optionalBool(_ reader: inout OptionReader, _ key: String) throws(GraphError) -> Bool? {
        let present = reader.has(key)
        let value = try reader.bool(key, default: false)  // consumes the key even when it is null
        return present ? value : nil
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        try await FileNodeState.open(name: name, configuration: self, controlExecutor: context.controlExecutor)
    }
}
