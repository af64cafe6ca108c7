import StrataGraph

/// A filter that stands for its filtered child in a backing chain (mirror_top, commit_top,
/// copy-before-write, blkdebug): a chain walk sees through it, as QEMU's skips filters, so it
/// answers block status, allocation and its backing layer as the child does.
public protocol TransparentChainLayer: BackingChainLayer {
    /// The child the filter passes guest I/O to, now.
    var filteredState: any NodeState { get }
}

extension TransparentChainLayer {
    public var backingLayer: (nodeName: String, state: any NodeState)? { (filteredState as? any BackingChainLayer)?.backingLayer }

    public var allocationUnitBytes: Int { (filteredState as? any BackingChainLayer)?.allocationUnitBytes ?? 512 }

    public func cachedAllocation(offsetBytes: UInt64, lengthBytes: Int) -> Bool? {
        (filteredState as? any BackingChainLayer)?.cachedAllocation(offsetBytes: offsetBytes, lengthBytes: lengthBytes)
    }

    public func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        try await filteredState.blockStatusOrData(offsetBytes: offsetBytes, maxLengthBytes: maxLengthBytes)
    }
}
