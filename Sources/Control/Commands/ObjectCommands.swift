import StrataFilters
import StrataFormatting
import StrataGraph
import StrataRuntime

/// A user-creatable object: a throttle group or a secret, as `object-add qom-type=...`.
enum QMPObject: Sendable {
    case throttleGroup(ThrottleGroupObject)
    case secret(SecretObject)

    var type: String {
        switch self {
        case .throttleGroup: "throttle-group"
        case .secret: "secret"
        }
    }
}

/// object-add and object-del for throttle groups and secrets (QEMU's other object types have no
/// meaning here).
enum ObjectCommands {
    static let all: [QMPCommand] = [
        QMPCommand("object-add") { monitor, arguments in
            let type = try arguments.string("qom-type")
            let id = try arguments.string("id")
            switch type {
            case "throttle-group":
                let limits = try arguments.optionalObject("limits") ?? [:]
                try arguments.finish()
                try monitor.addThrottleGroup(id: id, limits: limits)
            case "secret":
                var properties: [String: JSONValue] = [:]
                for key in ["data", "file", "format", "keyid", "iv"] {
                    if let value = arguments.value(key) { properties[key] = value }
                }
                try arguments.finish()
                try monitor.addSecret(id: id, properties: properties)
            default:
                throw QMPError("Invalid parameter 'qom-type': object type '\(type)' is not supported")
            }
            return .emptyObject
        },
        QMPCommand("object-del") { monitor, arguments in
            let id = try arguments.string("id")
            try arguments.finish()
            try await monitor.deleteObject(id: id)
            return .emptyObject
        },
        QMPCommand("qom-get") { monitor, arguments in
            let path = try arguments.string("path")
            let property = try arguments.string("property")
            try arguments.finish()
            let group = try monitor.throttleGroupObject(path: path, property: property)
            let limits = group.group.limits.options
            return .object(limits.keys.sorted().map { ($0, .uint(limits[$0]!)) })
        },
        QMPCommand("qom-set") { monitor, arguments in
            let path = try arguments.string("path")
            let property = try arguments.string("property")
            guard let value = arguments.value("value") else { throw QMPError("Parameter 'value' is missing") }
            try arguments.finish()
            let group = try monitor.throttleGroupObject(path: path, property: property)
            guard case .object(let changes) = value else { throw QMPError("Invalid parameter type for 'limits', expected: object") }
            do {
                group.group.setLimits(try group.group.limits.merging(changes, nodeName: group.id))
            } catch {
                throw QMPError("\(error)")
            }
            return .emptyObject
        },
        QMPCommand("query-block") { _, arguments in
            // Exports' backends are anonymous, as in qemu-storage-daemon: no named block devices.
            try arguments.finish()
            return .array([])
        },
    ]
}

extension QMPMonitor {
    /// The group behind a QOM path (`ID` or `/objects/ID`) whose `limits` a command reads or sets.
    func throttleGroupObject(path: String, property: String) throws -> ThrottleGroupObject {
        let id = path.hasPrefix("/objects/") ? String(path.dropFirst("/objects/".count)) : path
        guard let object = objects[id] else { throw QMPError("Device '\(path)' not found", class: .deviceNotFound) }
        guard property == "limits", case .throttleGroup(let group) = object else {
            throw QMPError("Property '\(object.type).\(property)' not found")
        }
        return group
    }

    /// Adds throttle group `id`; also what `--object throttle-group,...` does at start.
    public func addThrottleGroup(id: String, limits: [String: JSONValue]) throws {
        guard objects[id] == nil else { throw QMPError("attempt to add duplicate property '\(id)' to object (type 'container')") }
        do {
            let group = try ThrottleGroupObject(id: id, limits: limits, sharedObjects: daemon.engine.controller.sharedObjects,
                                                clock: MonotonicClock())
            objects[id] = .throttleGroup(group)
        } catch {
            throw QMPError("\(error)")
        }
    }

    /// Adds secret `id`; also what `--object secret,...` does at start. Nodes read it when they open.
    public func addSecret(id: String, properties: [String: JSONValue]) throws {
        guard objects[id] == nil else { throw QMPError("attempt to add duplicate property '\(id)' to object (type 'container')") }
        do {
            let secret = try SecretObject(id: id, properties: properties)
            _ = try daemon.engine.controller.sharedObjects.object(named: SecretObject.sharedObjectName(id: id), as: SecretObject.self) { secret }
            objects[id] = .secret(secret)
        } catch {
            throw QMPError("\(error)")
        }
    }

    func deleteObject(id: String) async throws {
        guard let object = objects[id] else { throw QMPError("object '\(id)' not found") }
        if case .secret = object {
            // Nodes took the secret's value when they opened: QEMU deletes a secret at any time.
            daemon.engine.controller.sharedObjects.remove(named: SecretObject.sharedObjectName(id: id))
            objects[id] = nil
            return
        }
        guard case .throttleGroup(let group) = object else { return }
        // A throttle node deleted just before leaves its group once its last request is done,
        // which QEMU's synchronous blockdev-del has already waited for: wait the same.
        await daemon.engine.controller.waitForRetirements()
        guard !group.isInUse else { throw QMPError("object '\(id)' is in use, can not be deleted") }
        group.delete()
        objects[id] = nil
    }
}
