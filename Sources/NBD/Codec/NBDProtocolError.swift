/// A peer broke the NBD protocol; the connection cannot go on. The text names who misbehaved
/// and how, for logs and for the error a client node hands its callers.
public struct NBDProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
