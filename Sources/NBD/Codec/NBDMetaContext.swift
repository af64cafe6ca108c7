/// The metadata contexts Strata serves for NBD_CMD_BLOCK_STATUS.
public enum NBDMetaContext: String, Sendable, CaseIterable, Hashable {
    /// doc/proto.md's allocation context: bit 0 hole, bit 1 reads as zero.
    case baseAllocation = "base:allocation"
    /// QEMU's (docs/interop/nbd.rst): the flags are how deep in the backing chain the data lives,
    /// 0 for unallocated in the whole chain, 1 for the top layer.
    case qemuAllocationDepth = "qemu:allocation-depth"

    /// The context's ID in NBD_REP_META_CONTEXT and BLOCK_STATUS chunks. IDs are opaque to
    /// clients; fixed ones let server and client code agree without a table.
    public var id: UInt32 {
        switch self {
        case .baseAllocation: return 1
        case .qemuAllocationDepth: return 2
        }
    }

    public var namespace: Substring { rawValue.prefix { $0 != ":" } }

    public init?(id: UInt32) {
        guard let context = Self.allCases.first(where: { $0.id == id }) else { return nil }
        self = context
    }

    public static let stateHole: UInt32 = 1 << 0
    public static let stateZero: UInt32 = 1 << 1

    /// The contexts among `available` that a query selects. LIST treats an empty leaf (`base:`)
    /// as a wildcard over its namespace; SET selects only exact names (doc/proto.md: an empty
    /// leaf SHOULD NOT select). Queries in namespaces Strata does not know select nothing.
    public static func matching(query: String, available: [NBDMetaContext], forList: Bool) -> [NBDMetaContext] {
        guard let colon = query.firstIndex(of: ":") else { return [] }
        let leaf = query[query.index(after: colon)...]
        if leaf.isEmpty {
            guard forList else { return [] }
            let namespace = query[..<colon]
            return available.filter { $0.namespace == namespace }
        }
        return available.filter { $0.rawValue == query }
    }
}
