import Foundation
import StrataFilters
import StrataGraph
import StrataNodes

/// A scenario file that cannot be run, with what is wrong and where.
public struct LabScenarioError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Reads a scenario file (JSON; the format is in examples/lab/README.md) strictly: every key known, every
/// number in range, every name resolved, so a typo is an error rather than a default.
public enum LabScenarioParser {
    public static func parse(file path: String) throws -> LabScenario {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LabScenarioError("\(path): cannot read the scenario file")
        }
        do {
            return try parse(data: data, name: URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent)
        } catch let error as LabScenarioError {
            throw LabScenarioError("\(path): \(error.description)")
        }
    }

    public static func parse(data: Data, name defaultName: String) throws -> LabScenario {
        let root: JSONValue
        do {
            root = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw LabScenarioError("not valid JSON: \(Self.describe(error))")
        }
        guard case .object(let fields) = root else { throw LabScenarioError("the scenario must be a JSON object, got \(root.typeName)") }
        do {
            return try parse(fields, defaultName: defaultName)
        } catch {
            throw LabScenarioError(error.description)
        }
    }

    private static func parse(_ fields: [String: JSONValue], defaultName: String) throws(GraphError) -> LabScenario {
        var reader = OptionReader(nodeName: "scenario", options: fields)
        let name = try reader.optionalString("name") ?? defaultName
        let seed = UInt64(bitPattern: try reader.integer("seed", default: 1, range: Int64.min...Int64.max))
        let clockName = try reader.choice("clock", allowed: ["virtual", "real"], default: "virtual")
        let clock = LabScenario.Clock(rawValue: clockName) ?? .virtual
        let durationMs = try reader.integer("duration-ms", range: 1...86_400_000)
        let intervalMs = try reader.integer("interval-ms", default: max(1, durationMs / 100), range: 1...durationMs)
        let durationNs = UInt64(durationMs) * 1_000_000
        guard let deviceValue = reader.raw("device"), deviceValue != .null else { throw .missingOption(node: "scenario", option: "device") }
        guard case .object(let deviceFields) = deviceValue else { throw reader.bad("device", "expects an object, got \(deviceValue.typeName)") }
        var deviceReader = OptionReader(nodeName: "device", options: deviceFields)
        let device = try Self.device(&deviceReader, clock: clock)
        let tenants = try Self.tenants(&reader, durationNs: durationNs)
        let policies = try Self.policies(&reader, tenants: tenants)
        try reader.finish()
        return LabScenario(name: name, seed: seed, clock: clock, durationNs: durationNs, intervalNs: UInt64(intervalMs) * 1_000_000,
                           device: device, tenants: tenants, policies: policies)
    }

    private static func device(_ reader: inout OptionReader, clock: LabScenario.Clock) throws(GraphError) -> LabScenario.Device {
        let driver = try reader.choice("driver", allowed: ["sim", "file"], default: "sim")
        let size = UInt64(try reader.integer("size", default: 64 << 20, range: 4096...(Int64(1) << 50)))
        let device: LabScenario.Device
        if driver == "sim" {
            device = .sim(try ServiceTimeModel.Parameters(parsing: &reader), sizeBytes: size)
        } else {
            guard clock == .real else { throw reader.bad("driver", "'file' is a real device: it needs \"clock\": \"real\"") }
            device = .file(path: try reader.string("filename"), sizeBytes: size)
        }
        try reader.finish()
        return device
    }

    private static func tenants(_ reader: inout OptionReader, durationNs: UInt64) throws(GraphError) -> [LabTenant] {
        guard case .array(let list)? = reader.raw("tenants") else { throw reader.bad("tenants", "expects a list of tenant objects") }
        guard !list.isEmpty, list.count <= 64 else { throw reader.bad("tenants", "must list 1 to 64 tenants, got \(list.count)") }
        var tenants: [LabTenant] = []
        for (index, item) in list.enumerated() {
            guard case .object(let fields) = item else { throw reader.bad("tenants[\(index)]", "expects an object, got \(item.typeName)") }
            var entry = OptionReader(nodeName: "tenants[\(index)]", options: fields)
            let name = try entry.optionalString("name") ?? "tenant\(index)"
            if tenants.contains(where: { $0.name == name }) { throw entry.bad("name", "'\(name)' names two tenants") }
            entry = OptionReader(nodeName: "tenant '\(name)'", options: fields)
            _ = try entry.optionalString("name")
            tenants.append(try Self.tenant(&entry, name: name, durationNs: durationNs))
            try entry.finish()
        }
        return tenants
    }

    private static func tenant(_ reader: inout OptionReader, name: String, durationNs: UInt64) throws(GraphError) -> LabTenant {
        let modes = ["read", "write", "randread", "randwrite", "rw", "readwrite", "randrw"]
        let mode = try reader.choice("rw", allowed: modes, default: "randread")
        var readPerMille = mode.hasSuffix("read") ? 1000 : mode.hasSuffix("write") ? 0 : 500
        if reader.has("rwmixread") {
            guard ["rw", "readwrite", "randrw"].contains(mode) else { throw reader.bad("rwmixread", "applies only to rw and randrw") }
            readPerMille = Int(try reader.integer("rwmixread", range: 0...100)) * 10
        }
        let blockSize = Int(try reader.integer("bs", default: 4096, range: 512...(16 << 20)))
        guard blockSize % 512 == 0 else { throw reader.bad("bs", "must be a multiple of 512, got \(blockSize)") }
        let arrivalName = try reader.choice("arrival", allowed: ["closed", "poisson", "bursty", "uniform"], default: "closed")
        let arrival: LabTenant.Arrival
        switch arrivalName {
        case "closed":
            if reader.has("rate") { throw reader.bad("rate", "applies to open-loop arrivals (poisson, bursty, uniform); a closed loop sets iodepth") }
            arrival = .closed(depth: Int(try reader.integer("iodepth", default: 1, range: 1...4096)))
        default:
            if reader.has("iodepth") { throw reader.bad("iodepth", "applies to closed-loop tenants; an open loop sets rate") }
            let rate = Double(try reader.integer("rate", range: 1...100_000_000))
            if arrivalName == "poisson" {
                arrival = .poisson(rate: rate)
            } else if arrivalName == "uniform" {
                arrival = .uniform(rate: rate)
            } else {
                let onMs = try reader.integer("burst-on-ms", range: 1...86_400_000)
                let offMs = try reader.integer("burst-off-ms", range: 1...86_400_000)
                arrival = .bursty(rate: rate, onNs: UInt64(onMs) * 1_000_000, offNs: UInt64(offMs) * 1_000_000)
            }
        }
        let durationMs = Int64(durationNs / 1_000_000)
        let startMs = try reader.integer("start-ms", default: 0, range: 0...durationMs)
        let stopMs = try reader.integer("stop-ms", default: durationMs, range: 0...durationMs)
        guard stopMs > startMs else { throw reader.bad("stop-ms", "must be after start-ms (\(startMs)), got \(stopMs)") }
        let reservation = UInt64(try reader.integer("reservation", default: 0, range: 0...(Int64(1) << 40)))
        let limit = UInt64(try reader.integer("limit", default: 0, range: 0...(Int64(1) << 40)))
        if limit > 0 && reservation > limit { throw reader.bad("reservation", "must not exceed limit \(limit), got \(reservation)") }
        let weight = UInt64(try reader.integer("weight", default: 1, range: 1...1_000_000))
        return LabTenant(name: name, readPerMille: readPerMille, isRandom: mode.hasPrefix("rand"), blockSize: blockSize,
                         arrival: arrival, startNs: UInt64(startMs) * 1_000_000, stopNs: UInt64(stopMs) * 1_000_000,
                         reservation: reservation, limit: limit, weight: weight)
    }

    private static func policies(_ reader: inout OptionReader, tenants: [LabTenant]) throws(GraphError) -> [LabPolicy] {
        guard case .array(let list)? = reader.raw("policies") else { throw reader.bad("policies", "expects a list of policy objects") }
        guard !list.isEmpty, list.count <= 32 else { throw reader.bad("policies", "must list 1 to 32 policies, got \(list.count)") }
        var policies: [LabPolicy] = []
        for (index, item) in list.enumerated() {
            guard case .object(var fields) = item else { throw reader.bad("policies[\(index)]", "expects an object, got \(item.typeName)") }
            guard case .string(let driver)? = fields["driver"] else {
                throw GraphError.missingOption(node: "policies[\(index)]", option: "driver")
            }
            guard let policyType = SchedulingPolicyCatalog.policy(named: driver) else {
                let known = SchedulingPolicyCatalog.policies.map { $0.driverName }.joined(separator: ", ")
                throw .badOption(node: "policies[\(index)]", option: "driver", reason: "names no scheduling policy ('\(driver)'); known: \(known)")
            }
            var name = driver
            if case .string(let given)? = fields.removeValue(forKey: "name") { name = given }
            if policies.contains(where: { $0.name == name }) {
                throw .badOption(node: "policies[\(index)]", option: "name", reason: "'\(name)' names two policies")
            }
            var maxInFlight = 8
            if let value = fields.removeValue(forKey: "max-in-flight") {
                var limitReader = OptionReader(nodeName: "policy '\(name)'", options: ["max-in-flight": value])
                maxInFlight = Int(try limitReader.integer("max-in-flight", range: 1...4096))
            }
            fields["driver"] = nil
            fields["tenants"] = try Self.policyTenants(fields["tenants"], policy: name, driver: driver, tenants: tenants)
            var options = OptionReader(nodeName: "policy '\(name)'", options: fields)
            _ = try policyType.make(parsing: &options)
            policies.append(LabPolicy(name: name, driver: driver, maxInFlight: maxInFlight, options: fields))
        }
        return policies
    }

    /// The policy's `tenants` as a list in tenant order: each entry from the policy's own object
    /// for that tenant, with the keys it leaves out filled from the tenant's reservation, limit and
    /// weight where the policy has such a key.
    private static func policyTenants(_ given: JSONValue?, policy: String, driver: String,
                                      tenants: [LabTenant]) throws(GraphError) -> JSONValue {
        var byName: [String: [String: JSONValue]] = [:]
        switch given {
        case nil, .null?: break
        case .object(let entries)?:
            for (tenantName, value) in entries {
                guard tenants.contains(where: { $0.name == tenantName }) else {
                    throw .badOption(node: "policy '\(policy)'", option: "tenants.\(tenantName)", reason: "names no tenant of the scenario")
                }
                guard case .object(let fields) = value else {
                    throw .badOption(node: "policy '\(policy)'", option: "tenants.\(tenantName)", reason: "expects an object, got \(value.typeName)")
                }
                byName[tenantName] = fields
            }
        case let other?:
            throw .badOption(node: "policy '\(policy)'", option: "tenants", reason: "expects an object keyed by tenant name, got \(other.typeName)")
        }
        return .array(tenants.map { tenant in
            var fields = byName[tenant.name] ?? [:]
            for (key, value) in Self.defaults(driver: driver, tenant: tenant) where fields[key] == nil { fields[key] = .int(value) }
            return .object(fields)
        })
    }

    /// What a tenant's promises mean in each policy's own terms.
    static func defaults(driver: String, tenant: LabTenant) -> [(String, Int64)] {
        var keys: [(String, Int64)] = []
        switch driver {
        case MClockPolicy.driverName:
            if tenant.reservation > 0 { keys.append(("reservation", Int64(tenant.reservation))) }
            if tenant.limit > 0 { keys.append(("limit", Int64(tenant.limit))) }
            keys.append(("weight", Int64(tenant.weight)))
        case WeightedFairPolicy.driverName:
            keys.append(("weight", Int64(tenant.weight)))
        case TokenBucketPolicy.driverName:
            if tenant.limit > 0 { keys.append(("iops", Int64(tenant.limit))) }
        case LeakyBucketPolicy.driverName:
            if tenant.limit > 0 { keys.append(("iops-total", Int64(tenant.limit))) }
        default:
            break
        }
        return keys
    }

    private static func describe(_ error: Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error {
            return (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String ?? context.debugDescription
        }
        return "\(error)"
    }
}
