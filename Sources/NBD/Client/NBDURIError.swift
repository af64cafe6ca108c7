/// An NBD URI that cannot be used, and why.
public struct NBDURIError: Error, Sendable, CustomStringConvertible {
    public let uri: String
    public let reason: String
    public var description: String { "invalid NBD URI '\(uri)': \(reason)" }
}
