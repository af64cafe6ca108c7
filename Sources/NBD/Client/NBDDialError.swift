/// Connecting to or negotiating with an NBD server failed; the text names the server and the fault.
struct NBDDialError: Error, Sendable, CustomStringConvertible {
    let message: String
    var description: String { message }
}
