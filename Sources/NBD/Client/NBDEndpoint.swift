import StrataNBD

/// What every connection of one node needs to reach its export: the node's name (for messages),
/// the server, the export, and how long requests wait for a lost connection to come back.
struct NBDEndpoint: Sendable {
    let nodeName: String
    let server: NBDRemoteAddress
    let addresses: [NBDSocketAddress]
    let exportName: String
    /// 0: a lost connection fails every request from then on (QEMU's reconnect-delay=0).
    let reconnectDelayNs: UInt64

    /// Why a later connection's negotiation cannot serve this node, or nil when it can: the size
    /// and the features requests rely on must match what the node opened with (QEMU refuses a
    /// reconnect to a changed export the same way).
    func mismatch(_ negotiation: NBDClientNegotiation, expected: NBDClientNegotiation) -> String? {
        if negotiation.sizeBytes != expected.sizeBytes {
            return "export size changed from \(expected.sizeBytes) to \(negotiation.sizeBytes) bytes"
        }
        if negotiation.transmissionFlags != expected.transmissionFlags {
            return "export flags changed from 0x\(String(expected.transmissionFlags.rawValue, radix: 16)) to 0x\(String(negotiation.transmissionFlags.rawValue, radix: 16))"
        }
        if negotiation.structuredReplies != expected.structuredReplies || negotiation.metaContexts != expected.metaContexts {
            return "server negotiated different reply features"
        }
        return nil
    }
}
