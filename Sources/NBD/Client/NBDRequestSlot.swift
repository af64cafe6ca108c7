import StrataNBD
import StrataRuntime

/// One entry of a connection's fixed table of requests in flight; its index is the NBD cookie.
/// Entries are reused, so a request costs no allocation of its own.
struct NBDRequestSlot {
    /// What became of the request's latest send.
    enum Outcome {
        case completed(IOStatus)
        /// The connection dropped and will be retried: send it again once reconnected.
        case resend
        case failed
    }

    var inUse = false
    var request = NBDRequest(command: .read, cookie: 0, offset: 0, length: 0)
    /// Where read data lands, or where write data comes from.
    var buffer: UnsafeMutableRawPointer?
    /// The connection generation the request was last sent on, nil while not on the wire.
    var sentOn: UInt64?
    var outcome: Outcome?
    var waiter: ParkedContinuation<Void>?
    /// The first base:allocation extent of a BLOCK_STATUS reply.
    var extent: NBDBlockDescriptor?

    mutating func reset() {
        self = NBDRequestSlot()
    }

    /// Records the outcome and wakes the sender if it already waits.
    mutating func settle(_ outcome: Outcome) {
        assert(inUse, "a reply settles a slot that is in use: the cookie names a request in flight")
        self.outcome = outcome
        sentOn = nil
        if let waiter {
            self.waiter = nil
            waiter.resume()
        }
    }
}
