import Glibc
import StrataGraph
import StrataRuntime

/// Internal snapshots (qemu-img snapshot -c/-a/-d), done through the node's caches under the
/// allocation lock. The caller keeps guest I/O away meanwhile (QEMU drains the node): an
/// overwrite in place while a snapshot is taken would change the snapshot too.
///
/// Ordering, as QEMU's qcow2-snapshot.c: references are counted up and made durable before any
/// table names the new tree, and counted down only after no durable table names the old one; a
/// crash leaves at worst leaked clusters.
extension Qcow2Allocator {
    /// Takes a snapshot of the active L1 table under `name`.
    nonisolated(nonsending) func createSnapshot(name: String, io: Qcow2ChildIO) async throws(Qcow2Failure) -> Qcow2Snapshot {
        try await flush(io: io)
        let active = (0..<metadata.l1.count).map { metadata.l1[$0] }
        try await adjustTree(l1: active, by: 1, io: io)
        // The active tree is shared now: nothing in it is this image's alone any more.
        let copied = Qcow2ClusterMapping.copiedFlag
        for (index, entry) in active.enumerated() where entry & Qcow2ClusterMapping.offsetMask != 0 {
            let table = entry & Qcow2ClusterMapping.offsetMask
            for slot in 0..<metadata.l2Entries {
                let index = slot * metadata.l2EntryWords
                let word = try await tableWord(table, index: index, io: io)
                if word & copied != 0 { try await setTableWord(word & ~copied, tableOffset: table, index: index, io: io) }
            }
            if entry & copied != 0 {
                metadata.l1.store(entry & ~copied, at: index)
                dirtyL1.insert(index)
            }
        }
        let l1Offset = try await writeNewClusters(active.map { $0 & ~copied }, io: io)
        // Microseconds, as QEMU's g_get_real_time() gives them.
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nextID = (snapshots.compactMap { Int($0.id) }.max() ?? 0) + 1
        let snapshot = Qcow2Snapshot(l1TableOffset: l1Offset, l1Size: UInt32(active.count), id: "\(nextID)", name: name,
                                     dateSeconds: UInt32(truncatingIfNeeded: now.tv_sec), dateNanoseconds: UInt32(now.tv_nsec / 1000 * 1000),
                                     diskSize: metadata.sizeBytes)
        try await flush(io: io)
        try await replaceSnapshotTable(snapshots + [snapshot], io: io)
        return snapshot
    }

    /// Deletes the snapshot with this ID or name, and the clusters only it referenced.
    nonisolated(nonsending) func deleteSnapshot(_ key: String, io: Qcow2ChildIO) async throws(Qcow2Failure) -> Qcow2Snapshot {
        guard let index = snapshots.firstIndex(where: { $0.id == key }) ?? snapshots.firstIndex(where: { $0.name == key }) else {
            throw Qcow2Failure(status: IOStatus(errno: ENOENT))
        }
        try await flush(io: io)
        let snapshot = snapshots[index]
        let tree = try await readL1(of: snapshot, io: io)
        var remaining = snapshots
        remaining.remove(at: index)
        try await replaceSnapshotTable(remaining, io: io)
        // No durable table names the snapshot now.
        try await adjustTree(l1: tree, by: -1, io: io)
        try await releaseClusters(offset: snapshot.l1TableOffset, bytes: UInt64(snapshot.l1Size) * 8, io: io)
        try await restoreCopiedFlags(io: io)
        try await flush(io: io)
        return snapshot
    }

    /// Makes the snapshot with this ID or name the active image again.
    nonisolated(nonsending) func applySnapshot(_ key: String, io: Qcow2ChildIO) async throws(Qcow2Failure) -> Qcow2Snapshot {
        guard let snapshot = snapshots.first(where: { $0.id == key }) ?? snapshots.first(where: { $0.name == key }) else {
            throw Qcow2Failure(status: IOStatus(errno: ENOENT))
        }
        // Resizing the image back is not supported: refuse rather than map the wrong size.
        if let size = snapshot.diskSize, size != metadata.sizeBytes { throw Qcow2Failure(status: .notSupported) }
        try await flush(io: io)
        var tree = try await readL1(of: snapshot, io: io)
        tree = Array(tree.prefix(metadata.l1.count)) + Array(repeating: 0, count: max(0, metadata.l1.count - tree.count))
        let old = (0..<metadata.l1.count).map { metadata.l1[$0] }
        try await adjustTree(l1: tree, by: 1, io: io)
        try await flush(io: io)
        for (index, entry) in tree.enumerated() {
            metadata.l1.store(entry & ~Qcow2ClusterMapping.copiedFlag, at: index)
            dirtyL1.insert(index)
            let table = entry & Qcow2ClusterMapping.offsetMask
            if table != 0 { overlaps.l2Tables.insert(table) }
        }
        try await flush(io: io)
        for entry in old where !tree.contains(where: { $0 & Qcow2ClusterMapping.offsetMask == entry & Qcow2ClusterMapping.offsetMask }) {
            overlaps.l2Tables.remove(entry & Qcow2ClusterMapping.offsetMask)
        }
        try await adjustTree(l1: old, by: -1, io: io)
        try await restoreCopiedFlags(io: io)
        try await flush(io: io)
        return snapshot
    }

    // MARK: Helpers

    /// The mapping word of L2 entry `slot` (extended entries: the first of two words, reserved bit dropped).
    private nonisolated(nonsending) func mappingWord(_ table: UInt64, slot: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        let word = try await tableWord(table, index: slot * metadata.l2EntryWords, io: io)
        return metadata.extendedL2 ? Qcow2ClusterMapping.extendedEntry(word) : word
    }

    /// Adds `delta` to the refcount of every L2 table under `l1` and every cluster they map.
    private nonisolated(nonsending) func adjustTree(l1: [UInt64], by delta: Int64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        for entry in l1 {
            let table = entry & Qcow2ClusterMapping.offsetMask
            guard table != 0 else { continue }
            for slot in 0..<metadata.l2Entries {
                let word = try await mappingWord(table, slot: slot, io: io)
                for cluster in referencedClusters(of: word) { try await refcounts.adjust(cluster, by: delta, io: io) }
            }
            try await refcounts.adjust(table >> UInt64(metadata.clusterBits), by: delta, io: io)
        }
    }

    /// Sets COPIED exactly where the refcount is 1 in the active tree (QEMU's
    /// update_snapshot_refcount with addend 0), after references were dropped.
    private nonisolated(nonsending) func restoreCopiedFlags(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let copied = Qcow2ClusterMapping.copiedFlag
        let bits = UInt64(metadata.clusterBits)
        for index in 0..<metadata.l1.count {
            let entry = metadata.l1[index]
            let table = entry & Qcow2ClusterMapping.offsetMask
            guard table != 0 else { continue }
            let owned = try await refcounts.refcount(of: table >> bits, io: io) == 1
            if owned != (entry & copied != 0) {
                metadata.l1.store(owned ? entry | copied : entry & ~copied, at: index)
                dirtyL1.insert(index)
            }
            guard owned else { continue }
            for slot in 0..<metadata.l2Entries {
                let index = slot * metadata.l2EntryWords
                let word = try await tableWord(table, index: index, io: io)
                let host = word & Qcow2ClusterMapping.offsetMask
                guard word & Qcow2ClusterMapping.compressedFlag == 0, host != 0 else { continue }
                let single = try await refcounts.refcount(of: host >> bits, io: io) == 1
                if single != (word & copied != 0) {
                    try await setTableWord(single ? word | copied : word & ~copied, tableOffset: table, index: index, io: io)
                }
            }
        }
    }

    /// The snapshot's L1 entries, read from the file (bounded by the L1 size limit).
    private nonisolated(nonsending) func readL1(of snapshot: Qcow2Snapshot, io: Qcow2ChildIO) async throws(Qcow2Failure) -> [UInt64] {
        let bytes = Int(snapshot.l1Size) * 8
        guard UInt64(bytes) <= Qcow2Header.maxL1Bytes, snapshot.l1TableOffset % UInt64(clusterSizeBytes) == 0,
              snapshot.l1TableOffset >= UInt64(clusterSizeBytes) else { throw .corrupt }
        guard bytes > 0 else { return [] }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { buffer.deallocate() }
        try await io.read(into: buffer, length: bytes, at: snapshot.l1TableOffset, event: .otherMetadata)
        return (0..<Int(snapshot.l1Size)).map { UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) }
    }

    /// Writes `entries` (big-endian) into newly allocated clusters; returns their offset.
    private nonisolated(nonsending) func writeNewClusters(_ entries: [UInt64], io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        var bytes = [UInt8](repeating: 0, count: max(8, entries.count * 8))
        bytes.withUnsafeMutableBytes { raw in
            for (index, entry) in entries.enumerated() { raw.storeBytes(of: entry.bigEndian, toByteOffset: index * 8, as: UInt64.self) }
        }
        return try await writeNewClusters(bytes: bytes, io: io)
    }

    nonisolated(nonsending) func writeNewClusters(bytes: [UInt8], io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        let clusters = (bytes.count + clusterSizeBytes - 1) / clusterSizeBytes
        let offset = try await refcounts.allocate(clusters, io: io) << UInt64(metadata.clusterBits)
        try checkOverlap(offset: offset, length: clusters * clusterSizeBytes, kind: .data)
        try await io.write(bytes: bytes, at: offset, event: .otherMetadata)
        return offset
    }

    /// Writes a new snapshot table, points the header at it, and frees the old one.
    private nonisolated(nonsending) func replaceSnapshotTable(_ entries: [Qcow2Snapshot], io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let bytes = Qcow2Snapshot.table(entries)
        let offset = bytes.isEmpty ? 0 : try await writeNewClusters(bytes: bytes, io: io)
        try await refcounts.writeback(io: io)
        try await io.flush()
        var header = [UInt8](repeating: 0, count: 12)
        header.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(entries.count).bigEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: offset.bigEndian, toByteOffset: 4, as: UInt64.self)
        }
        try await writeHeader(header, at: 60, io: io)
        try await io.flush()
        let oldOffset = snapshotTableOffset
        let oldBytes = snapshotTableBytes
        snapshots = entries
        snapshotTableOffset = offset
        snapshotTableBytes = UInt64(bytes.count)
        let cluster = UInt64(clusterSizeBytes)
        overlaps.snapshotRange = offset..<offset + (UInt64(bytes.count) + cluster - 1) / cluster * cluster
        if oldOffset != 0 { try await releaseClusters(offset: oldOffset, bytes: oldBytes, io: io) }
    }

    /// Drops one reference to each cluster of a table no durable metadata names any more.
    nonisolated(nonsending) func releaseClusters(offset: UInt64, bytes: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let bits = UInt64(metadata.clusterBits)
        let first = offset >> bits
        let last = (offset + max(bytes, 1) - 1) >> bits
        for cluster in first...last { try await refcounts.adjust(cluster, by: -1, io: io) }
    }

    private var clusterSizeBytes: Int { metadata.clusterSize }
}
