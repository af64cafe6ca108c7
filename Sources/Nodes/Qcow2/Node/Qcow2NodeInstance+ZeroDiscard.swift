import StrataGraph
import StrataRuntime

// Write-zeroes and discard: zero clusters, deallocation, partial clusters written as zeros.
extension Qcow2NodeInstance {
    /// Whole clusters become zero clusters (v3) or unallocated ones (discard, or zeroes in a v2
    /// image without a backing file); the parts of partial clusters are written as zeros, or left
    /// alone by a discard, which is only a hint.
    func zeroOrDiscard(_ request: BlockRequest) async -> IOStatus {
        guard let allocator else { return .readOnly }
        let clusterSize = UInt64(metadata.clusterSize)
        let start = request.offsetBytes
        let end = start + UInt64(request.lengthBytes)
        // The last cluster of the image counts as whole up to the image's end.
        let size = metadata.sizeBytes
        let firstWhole = (start + clusterSize - 1) / clusterSize * clusterSize
        let lastWhole = end == size ? (end + clusterSize - 1) / clusterSize * clusterSize : end / clusterSize * clusterSize
        let isDiscard = request.operation == .discard
        let hasZeroFlag = metadata.header.version >= 3
        // Without a zero flag, zeros survive deallocation only where no backing file shows through.
        let canDeallocate = isDiscard || hasZeroFlag || backing == nil
        if rawDataFile {
            // The raw data file must read as the guest does: zero it first, as QEMU's
            // qcow2_subcluster_zeroize (a discard only changes whole clusters).
            let zeroStart = isDiscard ? firstWhole : start
            let zeroEnd = min(isDiscard ? lastWhole : end, size)
            if zeroEnd > zeroStart {
                do {
                    try await dataIO.writeZeroes(length: Int(zeroEnd - zeroStart), at: zeroStart, event: .none)
                } catch {
                    return error.status
                }
            }
        }
        if !isDiscard && request.flags.contains(.noFallback) {
            // A fast zero (NBD FAST_ZERO, BDRV_REQ_NO_FALLBACK) may only change mappings: partial
            // clusters need data written, and so does an image without the zero flag that must
            // keep its clusters allocated (NO_HOLE) or has a backing file showing through.
            let partial = firstWhole > start || (end > lastWhole && lastWhole >= firstWhole) || lastWhole < firstWhole
            let needsZeroData = !hasZeroFlag && (backing != nil || !request.flags.contains(.mayUnmap))
            if partial || needsZeroData { return .notSupported }
        }
        if !isDiscard {
            let headEnd = min(firstWhole, end)
            if headEnd > start {
                let status = await zeroPart(from: start, to: headEnd)
                guard status.isOK else { return status }
            }
            if lastWhole >= firstWhole && end > lastWhole && firstWhole < end {
                let status = await zeroPart(from: lastWhole, to: end)
                guard status.isOK else { return status }
            }
            // Without a zero flag, zeros that must stay allocated (NO_HOLE) are written out.
            if (!canDeallocate || (!hasZeroFlag && !request.flags.contains(.mayUnmap))) && lastWhole > firstWhole {
                return await writeZeros(length: Int(lastWhole - firstWhole), at: firstWhole)
            }
        }
        guard lastWhole > firstWhole else { return .ok }
        await allocator.lock.lock()
        defer { allocator.lock.unlock() }
        guard !allocator.refusesWrites else { return .ioError }
        do {
            var cluster = firstWhole
            while cluster < lastWhole {
                let (l1Index, l2Index, _) = metadata.locate(cluster)
                let tableEntry = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
                let inTable = min(UInt64(metadata.l2Entries - l2Index), (lastWhole - cluster) / clusterSize)
                // A table that does not exist maps nothing: its clusters read as zeros already,
                // unless a backing file shows through and the zero flag can hide it.
                if tableEntry == 0 && (backing == nil || !hasZeroFlag) {
                    cluster += inTable * clusterSize
                    continue
                }
                // An allocation in flight in this stretch maps its cluster when its data is
                // written: wait for it, then look again.
                let firstGuest = cluster / clusterSize
                if let busy = (firstGuest..<firstGuest + inTable).first(where: { allocator.isInFlight(guestCluster: $0) }) {
                    await allocator.waitForAllocation(ofGuestCluster: busy)
                    await allocator.lock.lock()
                    continue
                }
                let table = try await allocator.writableTable(l1Index: l1Index, io: io)
                if extendedL2 {
                    try await replaceExtendedEntries(allocator, table: table, indices: l2Index..<l2Index + Int(inTable),
                                                     discard: isDiscard, mayUnmap: request.flags.contains(.mayUnmap))
                    cluster += inTable * clusterSize
                    continue
                }
                for index in l2Index..<l2Index + Int(inTable) {
                    let old = try await allocator.tableWord(table, index: index, io: io)
                    let new = replacement(for: old, discard: isDiscard, mayUnmap: request.flags.contains(.mayUnmap))
                    guard new != old else { continue }
                    try await allocator.setTableWord(new, tableOffset: table, index: index, io: io)
                    if new & Qcow2ClusterMapping.offsetMask == 0 {
                        allocator.refcounts.releaseAfterFlush(allocator.referencedClusters(of: old))
                    }
                }
                cluster += inTable * clusterSize
            }
            if request.flags.contains(.fua) { try await allocator.flush(io: io) }
            return .ok
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            return error.status
        }
    }

    /// The L2 entry a zeroed or discarded cluster gets, as QEMU's zero_in_l2_slice and
    /// discard_in_l2_slice: a v3 image marks it zero (keeping an owned host cluster when the
    /// caller did not allow unmapping), a v2 image deallocates it. A discard of an unallocated
    /// cluster without a backing file changes nothing.
    func replacement(for old: UInt64, discard: Bool, mayUnmap: Bool) -> UInt64 {
        let hasZeroFlag = metadata.header.version >= 3
        let mapping = Qcow2ClusterMapping(l2Entry: old, clusterBits: metadata.clusterBits, dataFile: hasDataFile)
        if mapping == .unallocated && backing == nil { return old }
        if discard {
            return hasZeroFlag ? Qcow2ClusterMapping.zeroFlag : 0
        }
        guard hasZeroFlag else { return 0 }
        if !mayUnmap, old & Qcow2ClusterMapping.copiedFlag != 0, old & Qcow2ClusterMapping.compressedFlag == 0,
           old & Qcow2ClusterMapping.offsetMask != 0 {
            return (old & (Qcow2ClusterMapping.offsetMask | Qcow2ClusterMapping.copiedFlag)) | Qcow2ClusterMapping.zeroFlag
        }
        return Qcow2ClusterMapping.zeroFlag
    }

    /// Zeros for part of one cluster: whole subclusters become zero subclusters with extended
    /// L2 entries, the rest is written as data.
    func zeroPart(from start: UInt64, to end: UInt64) async -> IOStatus {
        if extendedL2 { return await zeroSubclusters(from: start, to: end) }
        return await writeZeros(length: Int(end - start), at: start)
    }

    /// Zeros written as data, a cluster-sized zero buffer at a time.
    func writeZeros(length: Int, at offset: UInt64) async -> IOStatus {
        let buffer = clusterPool.take()
        defer { clusterPool.give(buffer) }
        buffer.base.initializeMemory(as: UInt8.self, repeating: 0, count: metadata.clusterSize)
        var done = 0
        while done < length {
            let chunk = min(length - done, metadata.clusterSize)
            let status = await write(from: buffer.base, length: chunk, at: offset + UInt64(done), fua: false)
            guard status.isOK else { return status }
            done += chunk
        }
        return .ok
    }
}
