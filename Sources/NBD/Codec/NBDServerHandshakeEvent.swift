/// What the server handshake reports to the connection that drives it.
public enum NBDServerHandshakeEvent: Sendable, Hashable {
    /// The client negotiated structured replies (NBD_OPT_STRUCTURED_REPLY was acknowledged).
    case structuredRepliesNegotiated
    /// NBD_OPT_SET_META_CONTEXT selected these contexts (possibly none) for the named export.
    case metaContextsSelected(exportName: String, contexts: [NBDMetaContext])
    /// An option was refused with an error reply; the handshake goes on.
    case optionRefused(option: UInt32, replyType: UInt32)
    /// Haggling is over; the bytes after the consumed count are transmission-phase requests.
    case transmission(NBDNegotiatedSession)
    /// The client sent NBD_OPT_ABORT and was acknowledged: send the output, then close.
    case aborted
    /// The client broke the protocol (or asked for something that can only be refused by
    /// hanging up): send any output, then close.
    case disconnect(reason: String)
}
