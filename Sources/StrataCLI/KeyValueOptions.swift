import ArgumentParser
import StrataGraph

/// QEMU's `key=value,key=value` option syntax (keyval): a doubled comma is a literal comma, a
/// dotted key nests (`file.filename=x` is `{"file": {"filename": "x"}}`).
enum KeyValueOptions {
    /// The pairs in order. With `impliedKey`, a first item without `=` is that key's value, as
    /// QEMU reads `--chardev socket,...` (backend) and `--object throttle-group,...` (qom-type).
    static func pairs(_ text: String, option: String, impliedKey: String? = nil) throws -> [(key: String, value: String)] {
        var pairs: [(key: String, value: String)] = []
        var current = ""
        var characters = Array(text)[...]
        var items: [String] = []
        while let character = characters.popFirst() {
            if character == "," {
                if characters.first == "," {
                    characters.removeFirst()
                    current.append(",")
                } else {
                    items.append(current)
                    current = ""
                }
            } else {
                current.append(character)
            }
        }
        items.append(current)
        var seen: Set<String> = []
        if let impliedKey, let first = items.first, !first.contains("=") {
            pairs.append((impliedKey, first))
            seen.insert(impliedKey)
            items.removeFirst()
        }
        for item in items {
            guard let equals = item.firstIndex(of: "=") else { throw ValidationError("\(option): '\(item)' is not key=value") }
            let key = String(item[..<equals])
            guard !key.isEmpty else { throw ValidationError("\(option): '\(item)' has an empty key") }
            guard seen.insert(key).inserted else { throw ValidationError("\(option): key '\(key)' given twice") }
            pairs.append((key, String(item[item.index(after: equals)...])))
        }
        return pairs
    }

    static func dictionary(_ text: String, option: String, allowed: Set<String>, impliedKey: String? = nil) throws -> [String: String] {
        var result: [String: String] = [:]
        for (key, value) in try pairs(text, option: option, impliedKey: impliedKey) {
            guard allowed.contains(key) else {
                throw ValidationError("\(option): unknown key '\(key)' (known: \(allowed.sorted().joined(separator: ", ")))")
            }
            result[key] = value
        }
        return result
    }

    /// `--blockdev` takes JSON (starting with `{`) or keyval, as qemu-storage-daemon does.
    static func blockdev(_ text: String) throws -> JSONValue {
        try nested(text, option: "--blockdev")
    }

    /// JSON, or keyval with dotted keys nested into objects (`limits.iops-total=5`).
    static func nested(_ text: String, option: String, impliedKey: String? = nil) throws -> JSONValue {
        if text.hasPrefix("{") { return try JSONValue.parse(text) }
        var root: [String: JSONValue] = [:]
        for (key, value) in try pairs(text, option: option, impliedKey: impliedKey) {
            try insert(value, at: key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)[...], into: &root, fullKey: key,
                       option: option)
        }
        return .object(root)
    }

    private static func insert(_ value: String, at path: ArraySlice<String>, into object: inout [String: JSONValue], fullKey: String,
                               option: String) throws {
        guard let head = path.first, !head.isEmpty else { throw ValidationError("\(option): bad key '\(fullKey)'") }
        if path.count == 1 {
            guard object[head] == nil else { throw ValidationError("\(option): key '\(fullKey)' conflicts with another") }
            object[head] = .string(value)
            return
        }
        var nested: [String: JSONValue]
        switch object[head] {
        case nil: nested = [:]
        case .object(let existing)?: nested = existing
        default: throw ValidationError("\(option): key '\(fullKey)' conflicts with another")
        }
        try insert(value, at: path.dropFirst(), into: &nested, fullKey: fullKey, option: option)
        object[head] = .object(nested)
    }

    static func onOff(_ value: String?, key: String, option: String, default defaultValue: Bool) throws -> Bool {
        switch value {
        case nil: return defaultValue
        case "on"?, "true"?, "yes"?: return true
        case "off"?, "false"?, "no"?: return false
        case let other?: throw ValidationError("\(option): \(key)=\(other) is not on or off")
        }
    }
}
