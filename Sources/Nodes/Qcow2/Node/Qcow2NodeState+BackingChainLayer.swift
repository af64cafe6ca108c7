import StrataGraph

/// A qcow2 node as one layer of a chain: its backing node, its cluster size, and a lookup of
/// cluster allocation that uses only the L1 table and the L2 cache, so copy-on-read can route
/// reads of allocated clusters without suspending.
extension Qcow2NodeState: BackingChainLayer {
    public var backingLayer: (nodeName: String, state: any NodeState)? { backing }

    public var allocationUnitBytes: Int { metadata.clusterSize }

    public func cachedAllocation(offsetBytes: UInt64, lengthBytes: Int) -> Bool? {
        let size = metadata.sizeBytes
        guard lengthBytes > 0, offsetBytes < size, UInt64(lengthBytes) <= size - offsetBytes else { return nil }
        // Subclusters and data files need their bitmaps and mappings: block status answers then.
        guard !metadata.extendedL2, !metadata.hasDataFile else { return nil }
        let clusterSize = UInt64(metadata.clusterSize)
        let end = offsetBytes + UInt64(lengthBytes)
        var cursor = offsetBytes
        while cursor < end {
            let (l1Index, l2Index, _) = metadata.locate(cursor)
            let table = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
            if table == 0 { return false }
            guard let entry = metadata.l2Cache.entry(tableOffset: table, index: l2Index)?.word else { return nil }
            if Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits) == .unallocated { return false }
            cursor = (cursor / clusterSize + 1) * clusterSize
        }
        return true
    }
}
