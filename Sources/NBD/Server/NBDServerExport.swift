import StrataGraph
import StrataNBD

/// An export being served: what the handshake advertises, the node it reads block status from,
/// and one port into the graph per queue, so a connection on queue i submits on queue i.
final class NBDServerExport: Sendable {
    let options: NBDExportOptions
    let state: any NodeState
    let ports: [BackendPort]
    /// The exported bitmaps, in the order of their contexts' IDs.
    let bitmaps: [DirtyBitmap]

    /// Buffered and direct files take any byte range (the file node bounces unaligned O_DIRECT
    /// requests), so clients are held to no alignment; 4 KiB is what every format reads well.
    static let blockSize = NBDBlockSizeConstraints(minimum: 1, preferred: 4096, maximumPayload: 32 << 20)

    init(options: NBDExportOptions, state: any NodeState, ports: [BackendPort], bitmaps: [DirtyBitmap] = []) {
        self.options = options
        self.bitmaps = bitmaps
        self.state = state
        self.ports = ports
    }

    /// What a client's handshake is told, with the node's size at that moment: a node grown or
    /// shrunk by block_resize shows its new size to clients that connect afterwards (a connected
    /// client keeps the size it was told, as NBD has no resize notification).
    var advertised: NBDExport {
        // Multi-conn is safe: every connection submits into the same node states, so a flush on
        // one reaches the writes another completed (one page cache, one qcow2 metadata cache).
        NBDExport(
            name: options.name, description: options.description, sizeBytes: state.sizeBytes, isReadOnly: !options.writable,
            capabilities: [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendCache, .sendFastZero],
            blockSize: Self.blockSize, canMultiConn: true,
            metaContexts: (options.allocationDepth ? [.baseAllocation, .qemuAllocationDepth] : [.baseAllocation])
                + bitmaps.enumerated().map { .qemuDirtyBitmap(name: $0.element.name ?? "", id: NBDMetaContext.firstBitmapID + UInt32($0.offset)) })
    }
}
