import StrataGraph

/// Where an rbd image is and how to reach its cluster: the options of QEMU's BlockdevOptionsRbd,
/// from `blockdev-add` keys or an `rbd:` filename.
struct RbdLocation: Sendable, Equatable {
    struct Server: Sendable, Equatable {
        let host: String
        let port: String
    }

    var pool: String
    var namespace: String?
    var image: String
    var snapshot: String?
    /// A ceph.conf to read; nil reads librados's default search path (and CEPH_CONF).
    var conf: String?
    /// The client id ("admin" when nil), without librados's "client." prefix.
    var user: String?
    var servers: [Server] = []
    var authClientRequired: [String] = []
    /// The secret object whose value (in base64) is the cephx key, read at open (QEMU's key-secret).
    var keySecret: String?
    /// Other `key=value` pairs of a filename, set in the cluster's configuration as given.
    var settings: [(key: String, value: String)] = []

    static func == (lhs: RbdLocation, rhs: RbdLocation) -> Bool {
        lhs.pool == rhs.pool && lhs.namespace == rhs.namespace && lhs.image == rhs.image && lhs.snapshot == rhs.snapshot
            && lhs.conf == rhs.conf && lhs.user == rhs.user && lhs.servers == rhs.servers
            && lhs.authClientRequired == rhs.authClientRequired && lhs.settings.map(\.key) == rhs.settings.map(\.key)
            && lhs.settings.map(\.value) == rhs.settings.map(\.value) && lhs.keySecret == rhs.keySecret
    }

    /// The mon_host setting for `server`, as QEMU builds it.
    var monitorHosts: String? {
        guard !servers.isEmpty else { return nil }
        return servers.map { $0.host.contains(":") ? "[\($0.host)]:\($0.port)" : "\($0.host):\($0.port)" }.joined(separator: ";")
    }

    /// QEMU's rbd filename: `rbd:pool/[namespace/]image[@snapshot][:key=value[:key=value...]]`,
    /// a backslash escaping the next character. `conf` names the configuration file, `id` the
    /// user; other keys are cluster settings.
    init(filename: String, nodeName: String) throws(GraphError) {
        func bad(_ reason: String) -> GraphError { .badOption(node: nodeName, option: "filename", reason: reason) }
        guard filename.hasPrefix("rbd:") else { throw bad("must start with 'rbd:', got '\(filename)'") }
        let fields = Self.split(String(filename.dropFirst(4)), on: ":")
        let path = Self.split(fields[0], on: "/")
        guard path.count == 2 || path.count == 3 else { throw bad("expects pool/image or pool/namespace/image, got '\(fields[0])'") }
        let imageAndSnapshot = Self.split(path[path.count - 1], on: "@")
        guard imageAndSnapshot.count <= 2 else { throw bad("names more than one snapshot: '\(path[path.count - 1])'") }
        pool = Self.unescape(path[0])
        namespace = path.count == 3 ? Self.unescape(path[1]) : nil
        image = Self.unescape(imageAndSnapshot[0])
        snapshot = imageAndSnapshot.count == 2 ? Self.unescape(imageAndSnapshot[1]) : nil
        guard !pool.isEmpty, !image.isEmpty else { throw bad("needs a pool and an image, got '\(fields[0])'") }
        for field in fields.dropFirst() {
            let pair = Self.split(field, on: "=")
            guard pair.count == 2, !pair[0].isEmpty else { throw bad("expects key=value, got '\(field)'") }
            let (key, value) = (Self.unescape(pair[0]), Self.unescape(pair[1]))
            switch key {
            case "conf": conf = value
            case "id": user = value
            default: settings.append((key, value))
            }
        }
    }

    /// The blockdev-add keys.
    init(parsing reader: inout OptionReader) throws(GraphError) {
        pool = try reader.string("pool")
        namespace = try reader.optionalString("namespace")
        image = try reader.string("image")
        snapshot = try reader.optionalString("snapshot")
        conf = try reader.optionalString("conf")
        user = try reader.optionalString("user")
        keySecret = try reader.optionalString("key-secret")
        if reader.has("encrypt") { throw reader.bad("encrypt", "is not supported (librbd encryption)") }
        switch reader.raw("server") {
        case nil, .null?: break
        case .array(let items)?:
            for (index, item) in items.enumerated() {
                guard case .object(let fields) = item else { throw reader.bad("server.\(index)", "expects {host, port}") }
                var entry = OptionReader(nodeName: reader.nodeName, options: fields)
                let host = try entry.string("host")
                let port = try entry.optionalString("port") ?? "6789"
                try entry.finish()
                servers.append(Server(host: host, port: port))
            }
        case let other?:
            throw reader.bad("server", "expects a list of {host, port}, got \(other.typeName)")
        }
        switch reader.raw("auth-client-required") {
        case nil, .null?: break
        case .array(let items)?:
            for item in items {
                guard case .string(let mode) = item, mode == "cephx" || mode == "none" else {
                    throw reader.bad("auth-client-required", "expects a list of 'cephx' and 'none'")
                }
                authClientRequired.append(mode)
            }
        case let other?:
            throw reader.bad("auth-client-required", "expects a list, got \(other.typeName)")
        }
        if pool.isEmpty { throw reader.bad("pool", "must not be empty") }
        if image.isEmpty { throw reader.bad("image", "must not be empty") }
    }

    /// Splits on `separator` where no backslash escapes it; escapes are kept for `unescape`.
    static func split(_ text: String, on separator: Character) -> [String] {
        var parts: [String] = [""]
        var escaped = false
        for character in text {
            if escaped {
                parts[parts.count - 1].append("\\")
                parts[parts.count - 1].append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == separator {
                parts.append("")
            } else {
                parts[parts.count - 1].append(character)
            }
        }
        if escaped { parts[parts.count - 1].append("\\") }
        return parts
    }

    static func unescape(_ text: String) -> String {
        var result = ""
        var escaped = false
        for character in text {
            if escaped || character != "\\" {
                result.append(character)
                escaped = false
            } else {
                escaped = true
            }
        }
        return result
    }
}
