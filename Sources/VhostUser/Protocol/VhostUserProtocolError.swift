/// A message the back end cannot accept: malformed, truncated, out of order or naming something
/// that does not exist. The text says which message and what was wrong; the connection that sent
/// it is closed (its device needs a reset), other connections and exports are untouched.
public struct VhostUserProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
