/// What a server tells clients about one export, and what it needs to check requests against.
public struct NBDExport: Sendable, Hashable {
    public var name: String
    public var description: String
    public var sizeBytes: UInt64
    public var isReadOnly: Bool
    /// Commands the node behind the export supports (flush, FUA, trim, write zeroes, cache, fast
    /// zero, rotational). The handshake adds HAS_FLAGS, READ_ONLY, CAN_MULTI_CONN and DF itself.
    public var capabilities: NBDTransmissionFlags
    public var blockSize: NBDBlockSizeConstraints
    /// Whether several connections see one coherent cache (NBD_FLAG_CAN_MULTI_CONN).
    public var canMultiConn: Bool
    /// Contexts the export can answer BLOCK_STATUS for.
    public var metaContexts: [NBDMetaContext]

    public init(
        name: String, description: String = "", sizeBytes: UInt64, isReadOnly: Bool = false,
        capabilities: NBDTransmissionFlags = [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendCache, .sendFastZero],
        blockSize: NBDBlockSizeConstraints = .default, canMultiConn: Bool = false,
        metaContexts: [NBDMetaContext] = [.baseAllocation, .qemuAllocationDepth]
    ) {
        self.name = name
        self.description = description
        self.sizeBytes = sizeBytes
        self.isReadOnly = isReadOnly
        self.capabilities = capabilities
        self.blockSize = blockSize
        self.canMultiConn = canMultiConn
        self.metaContexts = metaContexts
    }

    /// The transmission flags sent for this export. DF is only meaningful with structured replies,
    /// so it is advertised only then (as QEMU does).
    public func transmissionFlags(structuredReplies: Bool) -> NBDTransmissionFlags {
        var flags = capabilities.subtracting([.readOnly, .canMultiConn, .sendDF, .hasFlags])
        flags.insert(.hasFlags)
        if isReadOnly { flags.insert(.readOnly); flags.subtract(NBDTransmissionFlags.writeCommands) }
        if canMultiConn { flags.insert(.canMultiConn) }
        if structuredReplies { flags.insert(.sendDF) }
        return flags
    }
}

/// Where the server handshake looks exports up. Implementations answer from memory: the handshake
/// calls them while parsing and must not wait.
public protocol NBDExportCatalog: Sendable {
    /// The export a client names; "" is the default export, if there is one.
    func export(named name: String) -> NBDExport?
    /// Every export, for NBD_OPT_LIST.
    func allExports() -> [NBDExport]
}

/// A fixed list of exports; the first is also the default ("").
public struct NBDExportList: NBDExportCatalog {
    public var exports: [NBDExport]
    public init(_ exports: [NBDExport]) { self.exports = exports }

    public func export(named name: String) -> NBDExport? {
        if name.isEmpty { return exports.first }
        return exports.first { $0.name == name }
    }
    public func allExports() -> [NBDExport] { exports }
}
