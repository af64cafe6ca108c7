import StrataGraph
import StrataRuntime

/// Writes, zeroes and discards of images with extended L2 entries (32 subclusters a cluster,
/// docs/interop/qcow2.rst "Extended L2 Entries"), following QEMU's qcow2-cluster.c:
/// calculate_l2_meta for what an allocating write copies, zero_l2_subclusters,
/// zero_in_l2_slice and discard_in_l2_slice for zeroes and discards.
extension Qcow2NodeInstance {
    /// Writes the start of `source` (up to the end of its cluster) where the fast path could not:
    /// the cluster has no host cluster of its own, or some subcluster written is not allocated.
    /// An owned host cluster is kept and only the written subclusters are filled (the unwritten
    /// part of a partially written, unallocated subcluster comes from the old contents); otherwise
    /// a new host cluster gets the written subclusters plus every subcluster whose data lived in
    /// the old host cluster (all of a compressed one), merged into one write. Allocation lock held.
    /// Returns the bytes written: 0 when another queue allocated the subclusters meanwhile.
    func allocateSubclustersAndWrite(_ allocator: Qcow2Allocator, from source: UnsafeRawPointer, length: Int,
                                     at offset: UInt64) async throws(Qcow2Failure) -> Int {
        let clusterSize = metadata.clusterSize
        let bits = Int(metadata.subclusterBits)
        let (l1Index, l2Index, inCluster) = metadata.locate(offset)
        let chunk = min(length, clusterSize - inCluster)
        let guestCluster = offset - UInt64(inCluster)
        let table = try await allocator.writableTable(l1Index: l1Index, io: io)
        let (rawEntry, rawBitmap) = try await allocator.tableEntryPair(table, index: l2Index, io: io)
        let entry = Qcow2ClusterMapping.extendedEntry(rawEntry)
        let bitmap = Qcow2SubclusterBitmap(rawBitmap)
        let mapping = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile)
        guard bitmap.mapping(of: mapping, inCluster: 0, length: clusterSize, subclusterBits: metadata.subclusterBits) != nil,
              mapping != .corrupt else { throw .corrupt }
        let firstWritten = inCluster >> bits
        let lastWritten = (inCluster + chunk - 1) >> bits
        let owned: UInt64?
        if entry & Qcow2ClusterMapping.copiedFlag != 0, case .normal(let host) = mapping { owned = host } else { owned = nil }
        if owned != nil && bitmap.allAllocated(firstWritten..<lastWritten + 1) { return 0 }

        let host: UInt64
        let allocated: Range<Int>
        let spanStart: Int
        let spanEnd: Int
        if let owned {
            host = owned
            allocated = firstWritten..<lastWritten + 1
            // Allocated subclusters at either end are overwritten only where written: another
            // queue may be overwriting the rest of them right now.
            spanStart = bitmap.kind(firstWritten) == .allocated ? inCluster : firstWritten << bits
            spanEnd = bitmap.kind(lastWritten) == .allocated ? inCluster + chunk : (lastWritten + 1) << bits
        } else {
            var first = firstWritten
            var last = lastWritten
            switch mapping {
            case .compressed:
                (first, last) = (0, Qcow2SubclusterBitmap.subclusters - 1)
            case .normal where bitmap.hasAllocated:
                let allocatedBits = UInt32(truncatingIfNeeded: bitmap.raw)
                first = min(first, allocatedBits.trailingZeroBitCount)
                last = max(last, 31 - allocatedBits.leadingZeroBitCount)
            default:
                break
            }
            allocated = first..<last + 1
            spanStart = first << bits
            spanEnd = (last + 1) << bits
            host = try await allocateHostClusters(allocator, count: 1, guestCluster: guestCluster)
        }

        if spanStart == inCluster && spanEnd == inCluster + chunk {
            try await dataIO.write(from: source, length: chunk, at: host + UInt64(inCluster), event: .none)
        } else {
            let buffer = clusterPool.take()
            defer { clusterPool.give(buffer) }
            if spanStart < inCluster {
                try await readClusterView(into: buffer.base + spanStart, range: spanStart..<inCluster, mapping: mapping,
                                          bitmap: bitmap, guestCluster: guestCluster)
            }
            (buffer.base + inCluster).copyMemory(from: source, byteCount: chunk)
            if spanEnd > inCluster + chunk {
                try await readClusterView(into: buffer.base + inCluster + chunk, range: inCluster + chunk..<spanEnd, mapping: mapping,
                                          bitmap: bitmap, guestCluster: guestCluster)
            }
            try await dataIO.write(from: buffer.base + spanStart, length: spanEnd - spanStart, at: host + UInt64(spanStart), event: .cowWrite)
        }

        // The data is written: map it (allocated, no longer zero), and drop the old host
        // cluster's reference once the new mapping is durable.
        let newBitmap = (bitmap.raw | Qcow2SubclusterBitmap.allocationMask(allocated)) & ~Qcow2SubclusterBitmap.zeroMask(allocated)
        let newEntry = owned != nil ? rawEntry : host | Qcow2ClusterMapping.copiedFlag
        try await allocator.setTableEntryPair(newEntry, newBitmap, tableOffset: table, index: l2Index, io: io)
        if owned == nil { allocator.refcounts.releaseAfterFlush(allocator.referencedClusters(of: entry)) }
        return chunk
    }

    /// Bytes `range` of a guest cluster as its entry and bitmap map them, subcluster run by run.
    private func readClusterView(into base: UnsafeMutableRawPointer, range: Range<Int>, mapping: Qcow2ClusterMapping,
                                 bitmap: Qcow2SubclusterBitmap, guestCluster: UInt64) async throws(Qcow2Failure) {
        var position = range.lowerBound
        while position < range.upperBound {
            guard let (run, bytes) = bitmap.mapping(of: mapping, inCluster: position, length: range.upperBound - position,
                                                    subclusterBits: metadata.subclusterBits) else { throw .corrupt }
            let target = base + (position - range.lowerBound)
            let status: IOStatus
            switch run {
            case .normal(let host):
                status = await readData(into: target, length: bytes, at: host + UInt64(position))
            case .zero:
                target.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
                status = .ok
            case .unallocated:
                status = await readBacking(into: target, length: bytes, at: guestCluster + UInt64(position))
            case .compressed(let host, let compressedBytes):
                status = await readCompressed(into: target, length: bytes, inCluster: position, hostOffset: host,
                                              compressedBytes: compressedBytes)
            case .corrupt:
                status = .ioError
            }
            guard status.isOK else { throw Qcow2Failure(status: status) }
            position += bytes
        }
    }

    // MARK: Zeroes and discards

    /// Zeros for `start..<end` inside one cluster: whole subclusters get their zero bits (QEMU's
    /// zero_l2_subclusters), the rest, or all of it in a compressed cluster, is written as data.
    /// The image's last subcluster counts as whole up to the image's end.
    func zeroSubclusters(from start: UInt64, to end: UInt64) async -> IOStatus {
        let subcluster = UInt64(metadata.subclusterSize)
        let firstWhole = (start + subcluster - 1) / subcluster * subcluster
        let endWhole = end == metadata.sizeBytes ? (end + subcluster - 1) / subcluster * subcluster : end / subcluster * subcluster
        guard endWhole > firstWhole else { return await writeZeros(length: Int(end - start), at: start) }
        switch await markSubclustersZero(from: firstWhole, to: endWhole) {
        case .failure(let error):
            return error.status
        case .success(false):
            return await writeZeros(length: Int(end - start), at: start)
        case .success(true):
            break
        }
        if firstWhole > start {
            let status = await writeZeros(length: Int(firstWhole - start), at: start)
            guard status.isOK else { return status }
        }
        if end > endWhole { return await writeZeros(length: Int(end - endWhole), at: endWhole) }
        return .ok
    }

    /// Sets the zero bits (and clears the allocation bits) of the whole subclusters `start..<end`
    /// of one cluster. False for a compressed cluster, which cannot be zeroed in part.
    private func markSubclustersZero(from start: UInt64, to end: UInt64) async -> Result<Bool, Qcow2Failure> {
        guard let allocator else { return .failure(Qcow2Failure(status: .readOnly)) }
        await allocator.lock.lock()
        defer { allocator.lock.unlock() }
        guard !allocator.refusesWrites else { return .failure(.corrupt) }
        do {
            let (l1Index, l2Index, inCluster) = metadata.locate(start)
            // Without a table and a backing file, the subclusters read as zeros already.
            if metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask == 0 && backing == nil { return .success(true) }
            let table = try await allocator.writableTable(l1Index: l1Index, io: io)
            let (entry, bitmap) = try await allocator.tableEntryPair(table, index: l2Index, io: io)
            if entry & Qcow2ClusterMapping.compressedFlag != 0 { return .success(false) }
            let bits = Int(metadata.subclusterBits)
            let range = (inCluster >> bits)..<((inCluster + Int(end - start) - 1) >> bits) + 1
            let new = (bitmap | Qcow2SubclusterBitmap.zeroMask(range)) & ~Qcow2SubclusterBitmap.allocationMask(range)
            if new != bitmap { try await allocator.setTableEntryPair(entry, new, tableOffset: table, index: l2Index, io: io) }
            return .success(true)
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            return .failure(error)
        }
    }

    /// Whole clusters zeroed or discarded, as QEMU's zero_in_l2_slice and discard_in_l2_slice
    /// with subclusters: every subcluster reads as zeros. A write-zeroes keeps an owned host
    /// cluster unless the caller allows unmapping (a compressed one always goes); a discard
    /// drops the host cluster, and changes nothing in an unallocated cluster without a backing
    /// file. Allocation lock held.
    func replaceExtendedEntries(_ allocator: Qcow2Allocator, table: UInt64, indices: Range<Int>,
                                discard: Bool, mayUnmap: Bool) async throws(Qcow2Failure) {
        for index in indices {
            let (entry, bitmap) = try await allocator.tableEntryPair(table, index: index, io: io)
            let mapping = Qcow2ClusterMapping(l2Entry: Qcow2ClusterMapping.extendedEntry(entry), clusterBits: metadata.clusterBits,
                                              dataFile: hasDataFile)
            let hasHost: Bool
            switch mapping {
            case .normal, .compressed: hasHost = true
            default: hasHost = false
            }
            var newEntry = entry
            var newBitmap = bitmap
            if discard {
                if backing != nil || hasHost { (newEntry, newBitmap) = (0, Qcow2SubclusterBitmap.allZeroes) }
            } else {
                let isCompressed = entry & Qcow2ClusterMapping.compressedFlag != 0
                if isCompressed || (mayUnmap && hasHost) { newEntry = 0 }
                newBitmap = Qcow2SubclusterBitmap.allZeroes
            }
            guard newEntry != entry || newBitmap != bitmap else { continue }
            try await allocator.setTableEntryPair(newEntry, newBitmap, tableOffset: table, index: index, io: io)
            if newEntry != entry { allocator.refcounts.releaseAfterFlush(allocator.referencedClusters(of: entry)) }
        }
    }
}
