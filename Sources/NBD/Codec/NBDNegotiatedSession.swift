/// What a finished handshake agreed on: everything the transmission phase needs from it.
public struct NBDNegotiatedSession: Sendable, Hashable {
    public var export: NBDExport
    /// The flags the client was sent; requests are checked against these.
    public var transmissionFlags: NBDTransmissionFlags
    public var structuredReplies: Bool
    /// The contexts BLOCK_STATUS must answer, in the order their chunks are sent.
    public var metaContexts: [NBDMetaContext]
    /// The client asked for NBD_INFO_BLOCK_SIZE in its GO, so it promised to obey the constraints.
    public var blockSizeAcknowledged: Bool
    /// The handshake ended with NBD_OPT_EXPORT_NAME rather than NBD_OPT_GO.
    public var viaExportName: Bool

    public init(
        export: NBDExport, transmissionFlags: NBDTransmissionFlags, structuredReplies: Bool,
        metaContexts: [NBDMetaContext], blockSizeAcknowledged: Bool, viaExportName: Bool
    ) {
        self.export = export
        self.transmissionFlags = transmissionFlags
        self.structuredReplies = structuredReplies
        self.metaContexts = metaContexts
        self.blockSizeAcknowledged = blockSizeAcknowledged
        self.viaExportName = viaExportName
    }
}
