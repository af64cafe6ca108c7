import StrataGraph
import StrataNBD

extension NBDMetaContext {
    /// The descriptor flags this context reports for an extent of a node.
    public func statusFlags(for extent: BlockStatusExtent) -> UInt32 {
        switch self {
        case .baseAllocation:
            return (extent.isData ? 0 : Self.stateHole) | (extent.isZero ? Self.stateZero : 0)
        case .qemuAllocationDepth:
            // A chain's extent carries the layer index (0 = top); QEMU counts the top as 1.
            guard extent.isAllocated else { return 0 }
            return UInt32(clamping: (extent.depth ?? 0) + 1)
        case .qemuDirtyBitmap:
            preconditionFailure("a bitmap's status comes from the bitmap, not the node")
        }
    }
}
