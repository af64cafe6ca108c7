import StrataGraph
import StrataRuntime

/// block_resize and qemu-img resize for qcow2 (qcow2_co_truncate, preallocation off), live: queues
/// keep serving while it runs. Growing writes the new size, first moving the L1 table to a larger
/// place when the size needs more entries (QEMU's qcow2_grow_l1_table: new table allocated and
/// written, refcounts durable, header switched, old table freed), and only then lets requests
/// reach the new range. Shrinking first refuses requests past the new end and waits (`drain`)
/// until none that started before is in flight, then unmaps the clusters past it (QEMU discards
/// them), drops the L2 tables no longer needed, writes the size and cuts the file after its last
/// used cluster. Both hold the allocation lock, so no allocating write runs meanwhile.
extension Qcow2NodeState {
    /// `drain` returns once every request that started before the call has completed (the graph
    /// controller's barrier; nothing for an image no queue serves).
    public func resize(to newSize: UInt64, executor: QueueExecutor, drain: @Sendable () async -> Void = {}) async throws {
        // As QEMU since 5.0: snapshots keep their own size, so only shrinking is refused.
        guard snapshots.isEmpty || newSize >= metadata.sizeBytes else { throw Qcow2EditError("Internal snapshots prevent shrinking") }
        guard newSize % 512 == 0 else { throw Qcow2EditError("The new size must be a multiple of 512") }
        let entryCoverage = UInt64(metadata.clusterSize) * UInt64(metadata.l2Entries)
        let (rounded, overflow) = newSize.addingReportingOverflow(entryCoverage - 1)
        guard !overflow, rounded / entryCoverage * 8 <= Qcow2Header.maxL1Bytes else { throw Qcow2EditError("File too large") }
        let fileState = file.current
        let oldSize = metadata.sizeBytes
        if newSize >= oldSize {
            // Growing touches the L1 table and the header only, so subclusters do not matter.
            try await edit(on: executor, extendedL2Allowed: true) { allocator, io throws(Qcow2Failure) in
                try await Self.grow(allocator, to: newSize, io: io)
            }
            return
        }
        metadata.setSize(newSize)
        await drain()
        let clusterSize = UInt64(metadata.clusterSize)
        do {
            try await edit(on: executor) { allocator, io throws(Qcow2Failure) in
                let lastUsedCluster = try await Self.shrink(allocator, from: oldSize, to: newSize, io: io)
                // The file ends after its last cluster in use, as QEMU truncates it. Under the
                // allocation lock: a write allocating meanwhile could place an L2 table past the
                // cut, where a later read of that table would find no file.
                let fileEnd = (lastUsedCluster + 1) * clusterSize
                // A cut that fails leaves a longer file with unused space at its end, as before.
                guard let fileNode = fileState as? FileNodeState, fileEnd < fileNode.sizeBytes,
                      (try? await fileNode.resize(to: fileEnd)) != nil else { return }
                allocator.fileTruncated(to: fileEnd)
            }
        } catch {
            // The size on disk is written last: the image still has the old one.
            metadata.setSize(oldSize)
            throw error
        }
    }

    private static func l1Entries(for size: UInt64, metadata: Qcow2Metadata) -> UInt64 {
        let coverage = UInt64(metadata.clusterSize) * UInt64(metadata.l2Entries)
        return (size + coverage - 1) / coverage
    }

    private static func grow(_ allocator: Qcow2Allocator, to newSize: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let metadata = allocator.metadata
        try await allocator.flush(io: io)
        let needed = l1Entries(for: newSize, metadata: metadata)
        let diskEntries = metadata.l1DiskEntries
        let oldOffset = metadata.l1TableOffset
        if needed > UInt64(diskEntries) {
            let clusterSize = metadata.clusterSize
            let bytes = Int(needed) * 8
            let clusters = (bytes + clusterSize - 1) / clusterSize
            let newOffset = try await allocator.refcounts.allocate(clusters, io: io) << UInt64(metadata.clusterBits)
            let table = UnsafeMutableRawPointer.allocate(byteCount: clusters * clusterSize, alignment: 4096)
            defer { table.deallocate() }
            table.initializeMemory(as: UInt8.self, repeating: 0, count: clusters * clusterSize)
            // The table on disk, all of it: entries past those the size needed are kept too.
            if diskEntries > 0 { try await io.read(into: table, length: diskEntries * 8, at: oldOffset, event: .otherMetadata) }
            for index in 0..<metadata.l1.count {
                table.storeBytes(of: metadata.l1[index].bigEndian, toByteOffset: index * 8, as: UInt64.self)
            }
            try allocator.checkOverlap(offset: newOffset, length: clusters * clusterSize, kind: .activeL1)
            try await io.write(from: table, length: clusters * clusterSize, at: newOffset, event: .l1GrowWriteTable)
            // The new table and its refcounts are on disk before the header names it.
            try await allocator.flush(io: io)
            try await io.flush()
            // l1_size and l1_table_offset are adjacent (bytes 36-47): one write switches both, so
            // a crash never pairs the new size with the old table.
            var location = [UInt8](repeating: 0, count: 12)
            for index in 0..<4 { location[index] = UInt8(truncatingIfNeeded: needed >> UInt64(8 * (3 - index))) }
            for index in 0..<8 { location[4 + index] = UInt8(truncatingIfNeeded: newOffset >> UInt64(8 * (7 - index))) }
            try await io.write(bytes: location, at: 36, event: .l1GrowActivateTable)
            try await io.flush()
            // From here allocating writes update the new table (they wait for this lock meanwhile).
            metadata.setL1Table(offset: newOffset, diskEntries: Int(needed))
            allocator.overlaps.moveL1(offset: newOffset, entries: Int(needed))
            let oldClusters = (diskEntries * 8 + clusterSize - 1) / clusterSize
            let oldFirst = oldOffset >> UInt64(metadata.clusterBits)
            if diskEntries > 0 {
                for cluster in oldFirst..<oldFirst + UInt64(oldClusters) { try await allocator.refcounts.adjust(cluster, by: -1, io: io) }
            }
            try await allocator.flush(io: io)
        }
        if Int(needed) > metadata.l1.count { metadata.l1.resize(to: Int(needed)) }
        try await writeHeaderFields([(24, newSize, 8)], io: io)
        // Durable: requests may reach the new range now.
        metadata.setSize(newSize)
    }

    /// Returns the last cluster of the file still in use.
    private static func shrink(_ allocator: Qcow2Allocator, from oldSize: UInt64, to newSize: UInt64,
                               io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        let metadata = allocator.metadata
        let clusterSize = UInt64(metadata.clusterSize)
        let keptEnd = (newSize + clusterSize - 1) / clusterSize * clusterSize
        try await unmap(allocator, from: keptEnd, to: oldSize, io: io)
        try await allocator.flush(io: io)
        // L2 tables wholly past the new end go, their L1 entries cleared first.
        let needed = Int(l1Entries(for: newSize, metadata: metadata))
        var freedTables: [UInt64] = []
        for index in needed..<metadata.l1.count {
            let table = metadata.l1[index] & Qcow2ClusterMapping.offsetMask
            guard table != 0 else { continue }
            try await io.write(bytes: [UInt8](repeating: 0, count: 8), at: metadata.l1TableOffset + UInt64(index * 8), event: .l1Update)
            metadata.l1.store(0, at: index)
            freedTables.append(table)
        }
        try await io.flush()
        metadata.l1.resize(to: needed)
        for table in freedTables {
            // The cluster may come back as another table or as data: nothing may still name it.
            metadata.l2Cache.evict(tableOffset: table)
            allocator.overlaps.l2Tables.remove(table)
            try await allocator.refcounts.adjust(table >> UInt64(metadata.clusterBits), by: -1, io: io)
        }
        try await allocator.flush(io: io)
        try await writeHeaderFields([(24, newSize, 8)], io: io)
        var last = max(allocator.refcounts.endCluster, 1) - 1
        while last > 0, try await allocator.refcounts.refcount(of: last, io: io) == 0 { last -= 1 }
        return last
    }
}
