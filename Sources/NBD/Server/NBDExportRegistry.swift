import StrataNBD
import StrataRuntime

/// The server's exports, looked up by the handshake on whichever queue runs it. Changes are rare
/// (adding an export), lookups happen once per handshake, so one mutex is enough.
final class NBDExportRegistry: NBDExportCatalog {
    private let exports = Locked<[NBDServerExport]>([])

    func add(_ export: NBDServerExport) throws(NBDServerError) {
        try exports.withLock { (list: inout [NBDServerExport]) throws(NBDServerError) in
            if list.contains(where: { $0.options.id == export.options.id }) { throw .duplicateExport("an export with id '\(export.options.id)' exists already") }
            if list.contains(where: { $0.options.name == export.options.name }) { throw .duplicateExport("an export named '\(export.options.name)' exists already") }
            list.append(export)
        }
    }

    var all: [NBDServerExport] { exports.withLock { $0 } }

    /// Takes the export with `id` out of the handshake's view; connections already on it go on.
    func remove(id: String) -> NBDServerExport? {
        exports.withLock { list in
            guard let index = list.firstIndex(where: { $0.options.id == id }) else { return nil }
            return list.remove(at: index)
        }
    }

    /// The export behind a negotiated name ("" is the first export, the default).
    func served(named name: String) -> NBDServerExport? {
        exports.withLock { list in name.isEmpty ? list.first : list.first { $0.options.name == name } }
    }

    func export(named name: String) -> NBDExport? { served(named: name)?.advertised }
    func allExports() -> [NBDExport] { all.map(\.advertised) }
}
