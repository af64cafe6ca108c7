import StrataFilters
import StrataFormatting
import StrataGraph
import StrataRuntime

/// A user-creatable object: today a throttle group, as `object-add qom-type=throttle-group`.
struct QMPObject: Sendable {
    let type: String
    let throttleGroup: ThrottleGroupObject
}

/// object-add and object-del for throttle groups (QEMU's other object types have no meaning here).
enum ObjectCommands {
    static let all: [QMPCommand] = [
        QMPCommand("object-add") { monitor, arguments in
            let type = try arguments.string("qom-type")
            let id = try arguments.string("id")
            guard type == "throttle-group" else { throw QMPError("Invalid parameter 'qom-type': object type '\(type)' is not supported") }
            let limits = try arguments.optionalObject("limits") ?? [:]
            try arguments.finish()
            try monitor.addThrottleGroup(id: id, limits: limits)
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
        guard property == "limits" else { throw QMPError("Property '\(object.type).\(property)' not found") }
        return object.throttleGroup
    }

    /// Adds throttle group `id`; also what `--object throttle-group,...` does at start.
    public func addThrottleGroup(id: String, limits: [String: JSONValue]) throws {
        guard objects[id] == nil else { throw QMPError("attempt to add duplicate property '\(id)' to object (type 'container')") }
        do {
            let group = try ThrottleGroupObject(id: id, limits: limits, sharedObjects: daemon.engine.controller.sharedObjects,
                                                clock: MonotonicClock())
            objects[id] = QMPObject(type: "throttle-group", throttleGroup: group)
        } catch {
            throw QMPError("\(error)")
        }
    }

    func deleteObject(id: String) async throws {
        guard let object = objects[id] else { throw QMPError("object '\(id)' not found") }
        // A throttle node deleted just before leaves its group once its last request is done,
        // which QEMU's synchronous blockdev-del has already waited for: wait the same.
        await daemon.engine.controller.waitForRetirements()
        guard !object.throttleGroup.isInUse else { throw QMPError("object '\(id)' is in use, can not be deleted") }
        object.throttleGroup.delete()
        objects[id] = nil
    }
}
