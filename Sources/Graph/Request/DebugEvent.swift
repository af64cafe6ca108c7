/// What a format node issues a request to its file for, as QEMU's `BlkdebugEvent` names it, so a
/// fault-injection filter below (blkdebug) can fail, say, only the L2 table write-back of an
/// allocation. A request carries it from the node that made it; guest data carries `.none`, and
/// blkdebug reads its operation instead (`read_aio`, `write_aio`, `flush_to_disk`).
public enum DebugEvent: UInt8, Sendable, CaseIterable {
    case none
    /// Metadata with no QEMU event (the header, snapshot and bitmap tables): no rule matches it.
    case otherMetadata
    case l1Update
    case l1GrowWriteTable
    case l1GrowActivateTable
    case l2Load
    case l2Update
    case refblockLoad
    case refblockUpdatePart
    case refblockAllocWriteBlocks
    case refblockAllocWriteTable
    case refblockAllocSwitchTable
    case reftableUpdate
    case clusterAllocSpace
    case cowRead
    case cowWrite
    case writeCompressed
    case readCompressed

    /// QEMU's name (qapi/block-core.json, BlkdebugEvent); nil for the ones QEMU has no name for.
    public var qemuName: String? {
        switch self {
        case .none, .otherMetadata: nil
        case .l1Update: "l1_update"
        case .l1GrowWriteTable: "l1_grow_write_table"
        case .l1GrowActivateTable: "l1_grow_activate_table"
        case .l2Load: "l2_load"
        case .l2Update: "l2_update"
        case .refblockLoad: "refblock_load"
        case .refblockUpdatePart: "refblock_update_part"
        case .refblockAllocWriteBlocks: "refblock_alloc_write_blocks"
        case .refblockAllocWriteTable: "refblock_alloc_write_table"
        case .refblockAllocSwitchTable: "refblock_alloc_switch_table"
        case .reftableUpdate: "reftable_update"
        case .clusterAllocSpace: "cluster_alloc_space"
        case .cowRead: "cow_read"
        case .cowWrite: "cow_write"
        case .writeCompressed: "write_compressed"
        case .readCompressed: "read_compressed"
        }
    }
}
