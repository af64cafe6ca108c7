import StrataNodes

/// QEMU's qcow2_expand_zero_clusters, offline, for a downgrade to v2 (which has no zero flag):
/// in the active L1 table and then each snapshot's, a zero cluster with a preallocated host
/// cluster gets zeros written there and loses the flag; one without becomes unallocated when
/// the image has no backing file, and otherwise gets a newly allocated zeroed cluster (with the
/// L2 table's refcount, since a shared table references it once per user). Unlike QEMU 7.2, a
/// preallocated zero cluster that a snapshot's table maps as data is not zeroed in place but
/// replaced, so the snapshot keeps its data.
///
/// One L2 table at a time, in crash-safe order: new clusters counted (refcounts durable), zeros
/// written and flushed, then the L2 table written and flushed. A crash leaves every entry either
/// the old zero entry or its expansion, and at worst leaked clusters.
struct Qcow2ZeroClusterExpansion {
    let io: any Qcow2ImageIO
    let image: Qcow2OfflineImage
    let refcounts: Qcow2OfflineRefcounts
    let hasBacking: Bool

    /// Runs the expansion; `progress` gets the fraction of L1 entries visited.
    func run(progress: (Double) -> Void) async throws {
        var tables: [(offset: UInt64, entries: Int)] = [(image.header.l1TableOffset, Int(image.header.l1Size))]
        for snapshot in image.snapshots { tables.append((snapshot.l1TableOffset, Int(snapshot.l1Size))) }
        let total = max(1, tables.reduce(0) { $0 + $1.entries })
        var visited = 0
        let zeros = [UInt8](repeating: 0, count: Int(image.clusterSize))
        for table in tables where table.entries > 0 {
            let l1 = try await io.read(offset: table.offset, count: table.entries * 8)
            for index in 0..<table.entries {
                visited += 1
                let l2Offset = l1.loadBE64(at: index * 8) & Qcow2Checker.l1OffsetMask
                guard l2Offset != 0 else { continue }
                guard l2Offset % image.clusterSize == 0 else {
                    throw Qcow2ImageError("L2 table offset 0x\(String(l2Offset, radix: 16)) unaligned (L1 index: 0x\(String(index, radix: 16)))")
                }
                try await expand(l2Offset: l2Offset, zeros: zeros)
                progress(Double(visited) / Double(total))
            }
        }
    }

    private func expand(l2Offset: UInt64, zeros: [UInt8]) async throws {
        var l2 = try await io.read(offset: l2Offset, count: Int(image.clusterSize))
        let l2Refcount = try await refcounts.refcount(l2Offset >> UInt64(image.clusterBits))
        var zeroed: [UInt64] = []
        var released: [UInt64] = []
        var changed = false
        for slot in 0..<image.l2Entries {
            let entry = l2.loadBE64(at: slot * 8)
            guard entry & Qcow2ClusterMapping.compressedFlag == 0, entry & Qcow2ClusterMapping.zeroFlag != 0 else { continue }
            var host = entry & Qcow2ClusterMapping.offsetMask
            var copied = l2Refcount == 1
            if host == 0 {
                guard hasBacking else {
                    // Nothing below shows through, so unallocated reads as the same zeros.
                    l2.storeBE64(0, at: slot * 8)
                    changed = true
                    continue
                }
                host = try await refcounts.allocate(refcount: l2Refcount)
            } else {
                guard host % image.clusterSize == 0 else {
                    throw Qcow2ImageError("Cluster allocation offset 0x\(String(host, radix: 16)) unaligned (L2 offset: 0x\(String(l2Offset, radix: 16)), L2 index: 0x\(String(slot, radix: 16)))")
                }
                let dataRefcount = try await refcounts.refcount(host >> UInt64(image.clusterBits))
                if dataRefcount > l2Refcount {
                    // Another table (a snapshot's) maps this cluster as data: zeros written there
                    // would change it (QEMU 7.2 does so). A fresh cluster takes this table's
                    // references, dropped from the old one once the table is durable.
                    released.append(host >> UInt64(image.clusterBits))
                    host = try await refcounts.allocate(refcount: l2Refcount)
                } else {
                    copied = dataRefcount == 1
                }
            }
            zeroed.append(host)
            l2.storeBE64(host | (copied ? Qcow2ClusterMapping.copiedFlag : 0), at: slot * 8)
            changed = true
        }
        guard changed else { return }
        try await refcounts.commit()
        for host in zeroed { try await io.write(offset: host, bytes: zeros) }
        if !zeroed.isEmpty { try await io.flush() }
        try await io.write(offset: l2Offset, bytes: l2)
        try await io.flush()
        for cluster in released { try await refcounts.release(cluster, by: l2Refcount) }
        try await refcounts.commit()
    }
}
