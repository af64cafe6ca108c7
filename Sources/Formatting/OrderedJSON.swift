/// A JSON value whose objects keep their key order, printed as qemu-img prints JSON (4-space
/// indent), so `strata img` output lines up with qemu-img's field for field.
public indirect enum OrderedJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([OrderedJSON])
    case object([(String, OrderedJSON)])

    public static func == (lhs: OrderedJSON, rhs: OrderedJSON) -> Bool { lhs.text() == rhs.text() }

    public func text(indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent + 4)
        let close = String(repeating: " ", count: indent)
        switch self {
        case .null, .bool, .int, .uint, .double, .string: return compactText()
        case .array(let items):
            guard !items.isEmpty else { return "[]" }
            return "[\n" + items.map { pad + $0.text(indent: indent + 4) }.joined(separator: ",\n") + "\n\(close)]"
        case .object(let fields):
            guard !fields.isEmpty else { return "{}" }
            return "{\n" + fields.map { "\(pad)\(JSONText.quote($0.0)): \($0.1.text(indent: indent + 4))" }.joined(separator: ",\n") + "\n\(close)}"
        }
    }

    /// One line, with QEMU's separators (`{"return": {}}`, `{"a": 1, "b": [2, 3]}`): how QMP
    /// writes a message unless the monitor is pretty.
    public func compactText() -> String {
        var text = ""
        text.reserveCapacity(256)
        writeCompact(into: &text)
        return text
    }

    /// `compactText()` appended to `text`: one buffer for the whole message, no intermediate strings.
    public func writeCompact(into text: inout String) {
        switch self {
        case .null: text += "null"
        case .bool(let value): text += value ? "true" : "false"
        case .int(let value): text += String(value)
        case .uint(let value): text += String(value)
        case .double(let value): text += value.isFinite ? "\(value)" : "null"
        case .string(let value): JSONText.appendQuoted(value, to: &text)
        case .array(let items):
            text += "["
            for (index, item) in items.enumerated() {
                if index > 0 { text += ", " }
                item.writeCompact(into: &text)
            }
            text += "]"
        case .object(let fields):
            text += "{"
            for (index, field) in fields.enumerated() {
                if index > 0 { text += ", " }
                JSONText.appendQuoted(field.0, to: &text)
                text += ": "
                field.1.writeCompact(into: &text)
            }
            text += "}"
        }
    }
}
