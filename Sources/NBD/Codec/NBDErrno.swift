/// The error numbers NBD puts on the wire. They equal Linux's errno values by definition, so the
/// mapping is the identity for these and collapses every other errno onto one the protocol has.
public enum NBDErrno: UInt32, Sendable, CaseIterable {
    case permissionDenied = 1
    case io = 5
    case noMemory = 12
    case invalid = 22
    case noSpace = 28
    case overflow = 75
    case notSupported = 95
    case shutdown = 108

    /// The wire value for a Linux errno. doc/proto.md asks for EDQUOT and EFBIG as ENOSPC; errnos
    /// the protocol cannot express become EIO, the one that says only "it failed".
    public init(linuxErrno: Int32) {
        switch linuxErrno {
        case 1, 13: self = .permissionDenied  // EACCES reads as "not permitted" to the client too
        case 12: self = .noMemory
        case 22: self = .invalid
        case 28, 122, 27: self = .noSpace  // ENOSPC, EDQUOT, EFBIG
        case 75: self = .overflow
        case 95: self = .notSupported
        case 108: self = .shutdown
        default: self = .io
        }
    }

    /// A wire value from a server; values the protocol does not define read as EINVAL, as the
    /// spec tells clients to treat them.
    public init(wire: UInt32) {
        self = NBDErrno(rawValue: wire) ?? .invalid
    }

    public var linuxErrno: Int32 { Int32(rawValue) }
}
