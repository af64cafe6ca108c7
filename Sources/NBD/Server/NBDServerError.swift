/// Why the server refused a configuration change.
public enum NBDServerError: Error, Equatable, CustomStringConvertible {
    case duplicateExport(String)
    case badAddress(String)
    case shuttingDown
    case noSuchExport(String)
    case alreadyListening
    /// An exported bitmap that does not exist or is busy.
    case badBitmap(String)

    public var description: String {
        switch self {
        case .duplicateExport(let message): return message
        case .badAddress(let message): return message
        case .shuttingDown: return "the NBD server is shutting down"
        case .noSuchExport(let id): return "Export '\(id)' is not found"
        case .alreadyListening: return "NBD server already running"
        case .badBitmap(let message): return message
        }
    }
}
