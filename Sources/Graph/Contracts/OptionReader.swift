/// Reads one node's options strictly: typed getters with range checks, and `finish()` refuses any
/// key nobody asked for, so a misspelt option is an error rather than a silent default.
public struct OptionReader {
    public let nodeName: String
    private let options: [String: JSONValue]
    private var consumed: Set<String> = ["driver", "node-name"]

    public init(nodeName: String, options: [String: JSONValue]) {
        self.nodeName = nodeName
        self.options = options
    }

    public func has(_ key: String) -> Bool { options[key] != nil && options[key] != .null }

    public mutating func raw(_ key: String) -> JSONValue? {
        consumed.insert(key)
        return options[key]
    }

    public mutating func string(_ key: String) throws(GraphError) -> String {
        guard let value = try optionalString(key) else { throw .missingOption(node: nodeName, option: key) }
        return value
    }

    public mutating func optionalString(_ key: String) throws(GraphError) -> String? {
        guard let value = raw(key), value != .null else { return nil }
        guard case .string(let text) = value else { throw bad(key, "expects a string, got \(value.typeName)") }
        return text
    }

    public mutating func bool(_ key: String, default defaultValue: Bool) throws(GraphError) -> Bool {
        guard let value = raw(key), value != .null else { return defaultValue }
        switch value {
        case .bool(let flag): return flag
        case .string("on"), .string("true"): return true
        case .string("off"), .string("false"): return false
        default: throw bad(key, "expects a boolean ('on'/'off'), got \(value.typeName)")
        }
    }

    /// An integer in `range`; accepts JSON numbers and numeric strings (the command line's key=value form).
    public mutating func integer(_ key: String, default defaultValue: Int64? = nil, range: ClosedRange<Int64>) throws(GraphError) -> Int64 {
        guard let value = try optionalInteger(key, range: range) else {
            if let defaultValue { return defaultValue }
            throw .missingOption(node: nodeName, option: key)
        }
        return value
    }

    public mutating func optionalInteger(_ key: String, range: ClosedRange<Int64>) throws(GraphError) -> Int64? {
        guard let value = raw(key), value != .null else { return nil }
        let number: Int64
        switch value {
        case .int(let integer): number = integer
        case .double(let double) where double.rounded() == double && abs(double) < 9.2e18: number = Int64(double)
        case .string(let text):
            guard let parsed = Self.parseSize(text) else { throw bad(key, "expects a number, got '\(text)'") }
            number = parsed
        default: throw bad(key, "expects a number, got \(value.typeName)")
        }
        guard range.contains(number) else {
            throw bad(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
        }
        return number
    }

    /// A choice among `allowed` strings.
    public mutating func choice(_ key: String, allowed: [String], default defaultValue: String) throws(GraphError) -> String {
        let value = try optionalString(key) ?? defaultValue
        guard allowed.contains(value) else { throw bad(key, "expects one of \(allowed.joined(separator: ", ")), got '\(value)'") }
        return value
    }

    /// A child reference: a node name (inline definitions are split out by the graph before drivers see them).
    public mutating func child(_ key: String, role: ChildRole) throws(GraphError) -> ChildLink {
        guard let link = try optionalChild(key, role: role) else { throw .missingOption(node: nodeName, option: key) }
        return link
    }

    public mutating func optionalChild(_ key: String, role: ChildRole) throws(GraphError) -> ChildLink? {
        guard let value = raw(key), value != .null else { return nil }
        guard case .string(let name) = value else { throw bad(key, "expects a node name, got \(value.typeName)") }
        return ChildLink(role: role, optionKey: key, nodeName: name)
    }

    /// A nested object's reader (for grouped options such as throttle `limits`).
    public mutating func object(_ key: String) throws(GraphError) -> OptionReader? {
        guard let value = raw(key), value != .null else { return nil }
        guard case .object(let fields) = value else { throw bad(key, "expects an object, got \(value.typeName)") }
        return OptionReader(nodeName: nodeName, options: fields)
    }

    /// Refuses every option that no getter consumed.
    public func finish() throws(GraphError) {
        if let extra = options.keys.sorted().first(where: { !consumed.contains($0) }) {
            throw .unexpectedOption(node: nodeName, option: extra)
        }
    }

    public func bad(_ key: String, _ reason: String) -> GraphError {
        .badOption(node: nodeName, option: key, reason: reason)
    }

    /// "4096", "4k", "1M", "2G", "1T" (binary units, as QEMU's size options).
    public static func parseSize(_ text: String) -> Int64? {
        let trimmed = Substring(text)
        guard let last = trimmed.last else { return nil }
        let shifts: [Character: Int64] = ["k": 10, "K": 10, "m": 20, "M": 20, "g": 30, "G": 30, "t": 40, "T": 40]
        if let shift = shifts[last] {
            guard let base = Int64(trimmed.dropLast()), base >= 0 else { return nil }
            let (value, overflow) = base.multipliedReportingOverflow(by: 1 << shift)
            return overflow ? nil : value
        }
        if last == "b" || last == "B", let base = Int64(trimmed.dropLast()) { return base }
        return Int64(trimmed)
    }
}
