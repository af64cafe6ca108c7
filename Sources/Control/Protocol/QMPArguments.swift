import StrataGraph

/// A command's `arguments`, read key by key with QEMU's error texts (qapi's input visitor):
/// a missing key, a key of the wrong type, and a key nobody read are each named.
public struct QMPArguments: Sendable {
    private let values: [String: JSONValue]
    private var read: Set<String> = []

    public init(_ values: [String: JSONValue]) {
        self.values = values
    }

    public var all: [String: JSONValue] { values }

    public mutating func value(_ key: String) -> JSONValue? {
        read.insert(key)
        return values[key]
    }

    public mutating func string(_ key: String) throws(QMPError) -> String {
        guard let value = try optionalString(key) else { throw QMPError("Parameter '\(key)' is missing") }
        return value
    }

    public mutating func optionalString(_ key: String) throws(QMPError) -> String? {
        switch value(key) {
        case nil: return nil
        case .string(let text)?: return text
        default: throw QMPError("Invalid parameter type for '\(key)', expected: string")
        }
    }

    public mutating func optionalBool(_ key: String) throws(QMPError) -> Bool? {
        switch value(key) {
        case nil: return nil
        case .bool(let flag)?: return flag
        default: throw QMPError("Invalid parameter type for '\(key)', expected: boolean")
        }
    }

    public mutating func integer(_ key: String) throws(QMPError) -> Int64 {
        guard let value = try optionalInteger(key) else { throw QMPError("Parameter '\(key)' is missing") }
        return value
    }

    public mutating func optionalInteger(_ key: String) throws(QMPError) -> Int64? {
        switch value(key) {
        case nil: return nil
        case .int(let number)?: return number
        case .double(let number)? where number == number.rounded() && abs(number) < 9.2e18: return Int64(number)
        default: throw QMPError("Invalid parameter type for '\(key)', expected: integer")
        }
    }

    public mutating func object(_ key: String) throws(QMPError) -> [String: JSONValue] {
        guard let value = try optionalObject(key) else { throw QMPError("Parameter '\(key)' is missing") }
        return value
    }

    public mutating func optionalObject(_ key: String) throws(QMPError) -> [String: JSONValue]? {
        switch value(key) {
        case nil: return nil
        case .object(let fields)?: return fields
        default: throw QMPError("Invalid parameter type for '\(key)', expected: object")
        }
    }

    public mutating func array(_ key: String) throws(QMPError) -> [JSONValue] {
        switch value(key) {
        case nil: throw QMPError("Parameter '\(key)' is missing")
        case .array(let items)?: return items
        default: throw QMPError("Invalid parameter type for '\(key)', expected: array")
        }
    }

    public mutating func optionalArray(_ key: String) throws(QMPError) -> [JSONValue]? {
        switch value(key) {
        case nil: return nil
        case .array(let items)?: return items
        default: throw QMPError("Invalid parameter type for '\(key)', expected: array")
        }
    }

    /// Refuses the first key no getter read, as QEMU does.
    public func finish() throws(QMPError) {
        if let extra = values.keys.sorted().first(where: { !read.contains($0) }) {
            throw QMPError("Parameter '\(extra)' is unexpected")
        }
    }
}
