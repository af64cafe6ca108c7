/// Rebuilds the refcount structure from the computed refcounts when blocks are missing or
/// broken (QEMU's rebuild_refcount_structure): every refcount block with a non-zero entry is
/// written into a free cluster as a slice of the computed array, then a new refcount table,
/// again where the computed refcounts say clusters are free; the table may have to grow and
/// move until it covers itself. Only when all of it is on disk and flushed does the header
/// point at the new table; the old structures are left as leaks for the caller to free.
extension Qcow2Checker {
    func rebuildRefcountStructure() async throws {
        try await writeBackBlock()
        cachedBlock = nil
        var newTable: [UInt64] = []
        var firstFree = 0
        var grown = try await writeRefblocks(from: 0, to: refcounts.count, table: &newTable)
        precondition(grown, "a rebuilt refcount table starts empty")
        var tableOffset: UInt64 = 0
        var tableClusters = 0
        while grown {
            tableClusters = (newTable.count * 8 + clusterSize - 1) / clusterSize
            firstFree = 0
            let start = try allocate(clusters: tableClusters, firstFree: &firstFree)
            tableOffset = UInt64(start) << UInt64(clusterBits)
            grown = try await writeRefblocks(from: start, to: start + tableClusters, table: &newTable)
        }
        var bytes = [UInt8](repeating: 0, count: tableClusters * clusterSize)
        for (index, entry) in newTable.enumerated() { bytes.storeBE64(entry, at: index * 8) }
        try await io.write(offset: tableOffset, bytes: bytes)
        try await io.flush()

        var field = [UInt8](repeating: 0, count: 12)
        field.storeBE64(tableOffset, at: 0)
        field.storeBE32(UInt32(tableClusters), at: 8)
        try await io.write(offset: 48, bytes: field)
        try await io.flush()
        reftable = newTable + [UInt64](repeating: 0, count: tableClusters * clusterSize / 8 - newTable.count)
        reftableOffset = tableOffset
    }

    /// Writes the blocks covering clusters [first, end) that hold a non-zero entry, allocating
    /// each one that has no place yet; true when the table had to grow.
    private func writeRefblocks(from first: Int, to end: Int, table: inout [UInt64]) async throws -> Bool {
        var grown = false
        var firstFree = 0
        var end = end
        var cluster = first
        let perBlock = 1 << refblockBits
        while cluster < end {
            guard refcounts[cluster] != 0 else {
                cluster += 1
                continue
            }
            let blockIndex = cluster >> refblockBits
            let blockStart = blockIndex << refblockBits
            var blockOffset: UInt64
            if blockIndex < table.count, table[blockIndex] != 0 {
                blockOffset = table[blockIndex]
            } else {
                // Never into a block already written: its slice would go stale.
                firstFree = max(firstFree, blockStart)
                let at = try allocate(clusters: 1, firstFree: &firstFree)
                blockOffset = UInt64(at) << UInt64(clusterBits)
                // The block holding this block's own refcount must be (re)written too.
                if at >= end { end = at + 1 }
                if table.count <= blockIndex {
                    let entries = ((blockIndex + 1) * 8 + clusterSize - 1) / clusterSize * clusterSize / 8
                    table += [UInt64](repeating: 0, count: entries - table.count)
                    grown = true
                }
                table[blockIndex] = blockOffset
            }
            try await io.write(offset: blockOffset, bytes: refcounts.block(blockIndex))
            cluster = blockStart + perBlock
        }
        return grown
    }

    /// Finds `clusters` contiguous clusters free in the computed refcounts from `firstFree` on,
    /// growing the array past the end of the image when needed, and marks them used.
    private func allocate(clusters: Int, firstFree: inout Int) throws -> Int {
        var cluster = firstFree
        var run = 0
        var firstGap = true
        while cluster < refcounts.count, run < clusters {
            if refcounts[cluster] == 0 {
                run += 1
                if firstGap {
                    firstFree = cluster
                    firstGap = false
                }
            } else {
                run = 0
            }
            cluster += 1
        }
        if run < clusters {
            guard refcounts.grow(to: cluster + clusters - run) else {
                throw Qcow2ImageError("'\(name)': no room to rebuild the refcount structure within the check's memory bound")
            }
            cluster += clusters - run
        }
        let start = cluster - clusters
        for index in start..<(start + clusters) { refcounts[index] = 1 }
        return start
    }
}
