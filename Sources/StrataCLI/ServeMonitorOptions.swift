import ArgumentParser
import StrataControl
import StrataGraph

/// `--chardev`, `--monitor` and `--object` as qemu-storage-daemon takes them, turned into the
/// monitor addresses and throttle groups the daemon starts with.
struct ServeMonitorOptions {
    var monitors: [QMPMonitorAddress] = []
    /// Throttle groups by id, with their `limits` object.
    var throttleGroups: [(id: String, limits: [String: JSONValue])] = []
    var secrets: [(id: String, properties: [String: JSONValue])] = []

    init(chardevs: [String], monitors monitorSpecs: [String], objects: [String]) throws {
        var sockets: [String: QMPMonitorAddress.Endpoint] = [:]
        for spec in chardevs {
            let keys = try KeyValueOptions.dictionary(spec, option: "--chardev", allowed: ["backend", "id", "path", "host", "port", "server", "wait"],
                                                      impliedKey: "backend")
            guard keys["backend"] == "socket" else { throw ValidationError("--chardev: only 'socket' chardevs are supported, got '\(keys["backend"] ?? "")'") }
            guard let id = keys["id"], !id.isEmpty else { throw ValidationError("--chardev: needs id=") }
            guard try KeyValueOptions.onOff(keys["server"], key: "server", option: "--chardev \(id)", default: false) else {
                throw ValidationError("--chardev \(id): a monitor socket must be server=on")
            }
            guard !(try KeyValueOptions.onOff(keys["wait"], key: "wait", option: "--chardev \(id)", default: true)) else {
                throw ValidationError("--chardev \(id): give wait=off (a storage daemon does not wait for a monitor client)")
            }
            guard sockets[id] == nil else { throw ValidationError("--chardev: id '\(id)' given twice") }
            if let path = keys["path"] {
                guard keys["host"] == nil, keys["port"] == nil else { throw ValidationError("--chardev \(id): path= or host=/port=, not both") }
                sockets[id] = .unix(path: path)
            } else if let port = keys["port"] {
                guard let number = UInt16(port) else { throw ValidationError("--chardev \(id): port=\(port) is not a port") }
                sockets[id] = .tcp(host: keys["host"] ?? "127.0.0.1", port: number)
            } else {
                throw ValidationError("--chardev \(id): needs path= or port=")
            }
        }
        var used: Set<String> = []
        for spec in monitorSpecs {
            let keys = try KeyValueOptions.dictionary(spec, option: "--monitor", allowed: ["chardev", "mode", "pretty", "id"], impliedKey: "chardev")
            guard let id = keys["chardev"], let endpoint = sockets[id] else {
                throw ValidationError("--monitor: chardev '\(keys["chardev"] ?? "")' is not a --chardev")
            }
            guard keys["mode"] == nil || keys["mode"] == "control" else { throw ValidationError("--monitor: only mode=control is supported") }
            guard used.insert(id).inserted else { throw ValidationError("--monitor: chardev '\(id)' used twice") }
            monitors.append(QMPMonitorAddress(endpoint, pretty: try KeyValueOptions.onOff(keys["pretty"], key: "pretty", option: "--monitor", default: false)))
        }
        for spec in objects {
            guard case .object(var fields) = try KeyValueOptions.nested(spec, option: "--object", impliedKey: "qom-type") else {
                throw ValidationError("--object: expected an object")
            }
            let type = fields.removeValue(forKey: "qom-type")
            guard type == .string("throttle-group") || type == .string("secret") else {
                throw ValidationError("--object: only qom-type throttle-group and secret are supported")
            }
            guard case .string(let id)? = fields.removeValue(forKey: "id") else { throw ValidationError("--object: needs id=") }
            if type == .string("secret") {
                secrets.append((id, fields))
                continue
            }
            var limits: [String: JSONValue] = [:]
            if let given = fields.removeValue(forKey: "limits") {
                guard case .object(let object) = given else { throw ValidationError("--object \(id): limits must be an object") }
                limits = object
            }
            if let extra = fields.keys.sorted().first { throw ValidationError("--object \(id): unknown key '\(extra)'") }
            throttleGroups.append((id, limits))
        }
    }
}
