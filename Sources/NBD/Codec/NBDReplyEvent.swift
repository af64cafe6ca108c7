/// What the reply parser found in the server's stream, in order.
public enum NBDReplyEvent: Sendable, Hashable {
    /// Read data for `offset` onward; one reply's data may arrive in many pieces.
    case data(cookie: UInt64, offset: UInt64, bytes: [UInt8])
    /// `length` bytes from `offset` read as zeros.
    case hole(cookie: UInt64, offset: UInt64, length: UInt32)
    case blockStatus(cookie: UInt64, contextID: UInt32, descriptors: [NBDBlockDescriptor])
    /// An error chunk (structured replies only; a simple reply's error arrives in `.completed`).
    case error(cookie: UInt64, error: NBDErrno, message: String, offset: UInt64?)
    /// The reply is over; `error` is the first error it carried, nil when it succeeded.
    case completed(cookie: UInt64, error: NBDErrno?)
}
