/// One export as `--export type=nbd,...` (qemu-storage-daemon's BlockExportOptionsNbd) names it.
public struct NBDExportOptions: Sendable, Equatable {
    /// The export's ID (the backend it attaches as).
    public var id: String
    /// The graph node served.
    public var nodeName: String
    /// The name clients ask for; qemu-storage-daemon defaults it to the node name.
    public var name: String
    public var description: String
    public var writable: Bool
    /// Offer `qemu:allocation-depth` besides `base:allocation`.
    public var allocationDepth: Bool
    /// Dirty bitmaps offered as `qemu:dirty-bitmap:NAME`, by name: on the exported node or a node
    /// below it that it reads (its file or filtered child, down the chain).
    public var bitmaps: [String]
    /// x-tenant: the tag every request of this export carries (a scheduling policy's tenant, see
    /// design/lab.md).
    public var tenantTag: UInt32 = 0

    public init(id: String, nodeName: String, name: String? = nil, description: String = "", writable: Bool = false,
                allocationDepth: Bool = true, bitmaps: [String] = []) {
        self.bitmaps = bitmaps
        self.id = id
        self.nodeName = nodeName
        self.name = name ?? nodeName
        self.description = description
        self.writable = writable
        self.allocationDepth = allocationDepth
    }
}
