/// What the client handshake learned from the server.
public struct NBDClientNegotiation: Sendable, Hashable {
    /// A context the server selected, with the ID its BLOCK_STATUS chunks will carry.
    public struct MetaContext: Sendable, Hashable {
        public var id: UInt32
        public var name: String
        public init(id: UInt32, name: String) {
            self.id = id
            self.name = name
        }
    }

    /// An export from NBD_OPT_LIST.
    public struct ListedExport: Sendable, Hashable {
        public var name: String
        public var description: String
        public init(name: String, description: String) {
            self.name = name
            self.description = description
        }
    }

    public var sizeBytes: UInt64 = 0
    public var transmissionFlags: NBDTransmissionFlags = []
    /// Constraints the server sent, if any; nil means the spec's defaults apply.
    public var blockSize: NBDBlockSizeConstraints?
    public var canonicalName: String?
    public var description: String?
    public var structuredReplies = false
    public var metaContexts: [MetaContext] = []
    /// Filled by the `.list` mode.
    public var exports: [ListedExport] = []
    /// Filled by the `.listMetaContexts` mode.
    public var listedMetaContexts: [String] = []
    /// The server refused NBD_OPT_GO and the export was opened with NBD_OPT_EXPORT_NAME.
    public var usedExportNameFallback = false

    public init() {}
}
