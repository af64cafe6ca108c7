import StrataGraph

/// The validated options of an nbd node, as QEMU's blockdev nbd driver takes them: `server`
/// ({type: inet, host, port} or {type: unix, path}; also as flat `server.*` keys), `export`,
/// `reconnect-delay` (seconds) and `read-only`; or the legacy `filename` URI instead of server
/// and export.
struct NBDClientNodeConfiguration: NodeConfiguration {
    let server: NBDRemoteAddress
    let exportName: String
    let reconnectDelaySeconds: UInt32
    let readOnly: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        let filename = try reader.optionalString("filename")
        let serverReader = try Self.serverReader(&reader)
        let export = try reader.optionalString("export")
        if let filename {
            guard serverReader == nil, export == nil else { throw reader.bad("filename", "cannot be combined with 'server' or 'export'") }
            let uri: NBDURI
            do {
                uri = try NBDURI(filename)
            } catch {
                throw reader.bad("filename", "is an \(error)")
            }
            server = uri.server
            exportName = uri.exportName
        } else {
            guard var fields = serverReader else { throw .missingOption(node: reader.nodeName, option: "server") }
            server = try Self.parseServer(&fields)
            try fields.finish()
            exportName = export ?? ""
        }
        if exportName.utf8.count > 4096 { throw reader.bad("export", "is longer than NBD's 4096-byte limit") }
        reconnectDelaySeconds = UInt32(try reader.integer("reconnect-delay", default: 0, range: 0...Int64(UInt32.max)))
        readOnly = try reader.bool("read-only", default: false)
        try reader.finish()
    }

    /// The server fields, from a `server` object or flat `server.*` keys (the command line's
    /// key=value form), under their full names so errors name them as the user wrote them.
    private static func serverReader(_ reader: inout OptionReader) throws(GraphError) -> OptionReader? {
        var fields: [String: JSONValue] = [:]
        switch reader.raw("server") {
        case nil, .null?:
            break
        case .object(let nested)?:
            for (key, value) in nested { fields["server." + key] = value }
        case let other?:
            throw reader.bad("server", "expects an object ({type, host, port} or {type, path}), got \(other.typeName)")
        }
        for key in ["server.type", "server.host", "server.port", "server.path"] where reader.has(key) {
            fields[key] = reader.raw(key)
        }
        return fields.isEmpty ? nil : OptionReader(nodeName: reader.nodeName, options: fields)
    }

    private static func parseServer(_ reader: inout OptionReader) throws(GraphError) -> NBDRemoteAddress {
        let inferred = reader.has("server.path") ? "unix" : "inet"
        let type = try reader.choice("server.type", allowed: ["inet", "unix"], default: inferred)
        if type == "unix" {
            let path = try reader.string("server.path")
            if path.isEmpty { throw reader.bad("server.path", "must not be empty") }
            return .unix(path: path)
        }
        let host = try reader.string("server.host")
        if host.isEmpty { throw reader.bad("server.host", "must not be empty") }
        let port: String
        switch reader.raw("server.port") {
        case nil, .null?:
            port = NBDRemoteAddress.defaultPort
        case .int(let number)?:
            guard (1...65535).contains(number) else { throw reader.bad("server.port", "must be between 1 and 65535, got \(number)") }
            port = String(number)
        case .string(let text)?:
            // A number or a service name, as QEMU's inet address takes it.
            if let number = Int(text), !(1...65535).contains(number) {
                throw reader.bad("server.port", "must be between 1 and 65535, got \(number)")
            }
            if text.isEmpty { throw reader.bad("server.port", "must not be empty") }
            port = text
        case let other?:
            throw reader.bad("server.port", "expects a number or a string, got \(other.typeName)")
        }
        return .inet(host: host, port: port)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        try await NBDClientNodeState.open(name: name, configuration: self, context: context)
    }
}
