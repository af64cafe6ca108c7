import StrataFormatting
import StrataGraph

extension JSONValue {
    /// The value for a reply, object keys sorted (JSON objects are unordered; sorting keeps the
    /// output stable from run to run).
    var ordered: OrderedJSON {
        switch self {
        case .null: .null
        case .bool(let value): .bool(value)
        case .int(let value): .int(value)
        case .double(let value): .double(value)
        case .string(let value): .string(value)
        case .array(let items): .array(items.map(\.ordered))
        case .object(let fields): .object(fields.keys.sorted().map { ($0, fields[$0]!.ordered) })
        }
    }
}

extension OrderedJSON {
    static let emptyObject = OrderedJSON.object([])
}

/// QMP's JSON text for callers outside the monitor (the `strata qmp` client).
public enum QMPText {
    public static func ordered(_ value: JSONValue) -> OrderedJSON { value.ordered }
}
