import StrataFormatting
import StrataGraph

/// `query-qmp-schema`'s answer: qemu-storage-daemon's introspection narrowed to what Strata has
/// (scripts/generate-qmp-schema writes `QMPSchemaData`), parsed once.
enum QMPSchema {
    static let entries: OrderedJSON = {
        guard case .array(let items)? = try? JSONValue.parse(QMPSchemaData.json) else {
            preconditionFailure("QMPSchemaData.json is generated JSON: regenerate it with scripts/generate-qmp-schema")
        }
        precondition(items.count == QMPSchemaData.entryCount, "QMPSchemaData holds \(QMPSchemaData.entryCount) entries")
        return .array(items.map(\.ordered))
    }()
}
