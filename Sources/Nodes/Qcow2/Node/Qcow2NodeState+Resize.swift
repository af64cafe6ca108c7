import StrataGraph
import StrataRuntime

/// qemu-img resize for qcow2 (qcow2_co_truncate, preallocation off). Growing writes the new
/// size, first moving the L1 table to a larger place when the size needs more entries (QEMU's
/// qcow2_grow_l1_table: new table allocated and written, refcounts durable, header switched,
/// old table freed). Shrinking unmaps the clusters past the new end (QEMU discards them), drops
/// the L2 tables no longer needed, writes the size and cuts the file after its last used cluster.
extension Qcow2NodeState {
    public func resize(to newSize: UInt64, executor: QueueExecutor) async throws {
        let header = metadata.header
        guard header.snapshotCount == 0 else { throw Qcow2EditError("Can't resize an image which has snapshots") }
        guard newSize % 512 == 0 else { throw Qcow2EditError("The new size must be a multiple of 512") }
        let entryCoverage = UInt64(metadata.clusterSize) * UInt64(metadata.l2Entries)
        let (rounded, overflow) = newSize.addingReportingOverflow(entryCoverage - 1)
        guard !overflow, rounded / entryCoverage * 8 <= Qcow2Header.maxL1Bytes else { throw Qcow2EditError("File too large") }
        let fileState = file.current
        if newSize >= header.sizeBytes {
            try await edit(on: executor) { allocator, io throws(Qcow2Failure) in
                try await Self.grow(allocator, to: newSize, io: io)
            }
        } else {
            let lastUsedCluster = try await edit(on: executor) { allocator, io throws(Qcow2Failure) in
                try await Self.shrink(allocator, to: newSize, io: io)
            }
            // The file ends after its last cluster in use, as QEMU truncates it.
            let fileEnd = (lastUsedCluster + 1) * UInt64(metadata.clusterSize)
            if let fileNode = fileState as? FileNodeState, fileEnd < fileNode.sizeBytes {
                try await fileNode.resize(to: fileEnd)
            }
        }
    }

    private static func l1Entries(for size: UInt64, metadata: Qcow2Metadata) -> UInt64 {
        let coverage = UInt64(metadata.clusterSize) * UInt64(metadata.l2Entries)
        return (size + coverage - 1) / coverage
    }

    private static func grow(_ allocator: Qcow2Allocator, to newSize: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let metadata = allocator.metadata
        let header = metadata.header
        try await allocator.flush(io: io)
        let needed = l1Entries(for: newSize, metadata: metadata)
        if needed > UInt64(header.l1Size) {
            let clusterSize = metadata.clusterSize
            let bytes = Int(needed) * 8
            let clusters = (bytes + clusterSize - 1) / clusterSize
            let newOffset = try await allocator.refcounts.allocate(clusters, io: io) << UInt64(metadata.clusterBits)
            let table = UnsafeMutableRawPointer.allocate(byteCount: clusters * clusterSize, alignment: 4096)
            defer { table.deallocate() }
            table.initializeMemory(as: UInt8.self, repeating: 0, count: clusters * clusterSize)
            // The table on disk, all of it: entries past those the size needed are kept too.
            if header.l1Size > 0 { try await io.read(into: table, length: Int(header.l1Size) * 8, at: header.l1TableOffset) }
            for index in 0..<metadata.l1.count {
                table.storeBytes(of: metadata.l1[index].bigEndian, toByteOffset: index * 8, as: UInt64.self)
            }
            try await io.write(from: table, length: clusters * clusterSize, at: newOffset)
            // The new table and its refcounts are on disk before the header names it.
            try await allocator.flush(io: io)
            try await io.flush()
            // l1_size and l1_table_offset are adjacent (bytes 36-47): one write switches both, so
            // a crash never pairs the new size with the old table.
            var location = [UInt8](repeating: 0, count: 12)
            for index in 0..<4 { location[index] = UInt8(truncatingIfNeeded: needed >> UInt64(8 * (3 - index))) }
            for index in 0..<8 { location[4 + index] = UInt8(truncatingIfNeeded: newOffset >> UInt64(8 * (7 - index))) }
            try await io.write(bytes: location, at: 36)
            try await io.flush()
            let oldClusters = (Int(header.l1Size) * 8 + clusterSize - 1) / clusterSize
            let oldFirst = header.l1TableOffset >> UInt64(metadata.clusterBits)
            if header.l1Size > 0 {
                for cluster in oldFirst..<oldFirst + UInt64(oldClusters) { try await allocator.refcounts.adjust(cluster, by: -1, io: io) }
            }
            try await allocator.flush(io: io)
        }
        try await writeHeaderFields([(24, newSize, 8)], io: io)
    }

    /// Returns the last cluster of the file still in use.
    private static func shrink(_ allocator: Qcow2Allocator, to newSize: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        let metadata = allocator.metadata
        let header = metadata.header
        let clusterSize = UInt64(metadata.clusterSize)
        let keptEnd = (newSize + clusterSize - 1) / clusterSize * clusterSize
        try await unmap(allocator, from: keptEnd, to: header.sizeBytes, io: io)
        try await allocator.flush(io: io)
        // L2 tables wholly past the new end go, their L1 entries cleared first.
        let needed = Int(l1Entries(for: newSize, metadata: metadata))
        var freedTables: [UInt64] = []
        for index in needed..<metadata.l1.count {
            let table = metadata.l1[index] & Qcow2ClusterMapping.offsetMask
            guard table != 0 else { continue }
            try await io.write(bytes: [UInt8](repeating: 0, count: 8), at: header.l1TableOffset + UInt64(index * 8))
            metadata.l1.store(0, at: index)
            freedTables.append(table >> UInt64(metadata.clusterBits))
        }
        try await io.flush()
        for cluster in freedTables { try await allocator.refcounts.adjust(cluster, by: -1, io: io) }
        try await allocator.flush(io: io)
        try await writeHeaderFields([(24, newSize, 8)], io: io)
        var last = max(allocator.refcounts.endCluster, 1) - 1
        while last > 0, try await allocator.refcounts.refcount(of: last, io: io) == 0 { last -= 1 }
        return last
    }
}
