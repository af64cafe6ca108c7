/// The metadata contexts Strata serves for NBD_CMD_BLOCK_STATUS.
public enum NBDMetaContext: Sendable, Hashable {
    /// doc/proto.md's allocation context: bit 0 hole, bit 1 reads as zero.
    case baseAllocation
    /// QEMU's (docs/interop/nbd.rst): the flags are how deep in the backing chain the data lives,
    /// 0 for unallocated in the whole chain, 1 for the top layer.
    case qemuAllocationDepth
    /// QEMU's `qemu:dirty-bitmap:NAME`: bit 0 set where the bitmap marks the range dirty (what
    /// changed since the bitmap started: a pull-mode incremental backup reads just that). The
    /// export numbers its bitmaps' contexts from `firstBitmapID`.
    case qemuDirtyBitmap(name: String, id: UInt32)

    public static let firstBitmapID: UInt32 = 16

    /// The context's name in NBD_OPT_LIST/SET_META_CONTEXT.
    public var rawValue: String {
        switch self {
        case .baseAllocation: "base:allocation"
        case .qemuAllocationDepth: "qemu:allocation-depth"
        case .qemuDirtyBitmap(let name, _): "qemu:dirty-bitmap:\(name)"
        }
    }

    /// The fixed contexts by name (a bitmap's needs its export's numbering).
    public init?(rawValue: String) {
        switch rawValue {
        case "base:allocation": self = .baseAllocation
        case "qemu:allocation-depth": self = .qemuAllocationDepth
        default: return nil
        }
    }

    /// The context's ID in NBD_REP_META_CONTEXT and BLOCK_STATUS chunks. IDs are opaque to
    /// clients; fixed ones let server and client code agree without a table.
    public var id: UInt32 {
        switch self {
        case .baseAllocation: 1
        case .qemuAllocationDepth: 2
        case .qemuDirtyBitmap(_, let id): id
        }
    }

    public var namespace: Substring { rawValue.prefix { $0 != ":" } }

    public static let stateHole: UInt32 = 1 << 0
    public static let stateZero: UInt32 = 1 << 1
    /// qemu:dirty-bitmap's flag.
    public static let stateDirty: UInt32 = 1 << 0

    /// The contexts among `available` that a query selects. LIST treats an empty leaf (`base:`)
    /// as a wildcard over its namespace, and `qemu:dirty-bitmap:` over the bitmaps; SET selects
    /// only exact names (doc/proto.md: an empty leaf SHOULD NOT select). Queries in namespaces
    /// Strata does not know select nothing.
    public static func matching(query: String, available: [NBDMetaContext], forList: Bool) -> [NBDMetaContext] {
        guard let colon = query.firstIndex(of: ":") else { return [] }
        let leaf = query[query.index(after: colon)...]
        if leaf.isEmpty {
            guard forList else { return [] }
            let namespace = query[..<colon]
            return available.filter { $0.namespace == namespace }
        }
        if forList && query == "qemu:dirty-bitmap:" {
            return available.filter { if case .qemuDirtyBitmap = $0 { true } else { false } }
        }
        return available.filter { $0.rawValue == query }
    }
}
