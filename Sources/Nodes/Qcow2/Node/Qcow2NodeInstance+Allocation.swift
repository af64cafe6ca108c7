import StrataGraph
import StrataRuntime

// Allocating writes: plan under the allocation lock, write data, map.
extension Qcow2NodeInstance {
    /// Writes the start of `source` into newly allocated clusters: the run of clusters from
    /// `offset` (within one L2 table) that this image does not own yet, allocated contiguously.
    /// Partial clusters at either end are merged with their old contents (backing data, zeros, a
    /// shared or compressed cluster) into one write each; whole clusters in between go straight
    /// from `source`. Returns how many bytes of `source` it wrote: 0 when another request
    /// allocated the cluster meanwhile (the caller then looks it up again and overwrites it).
    ///
    /// The allocation lock is held to plan (allocate host clusters, mark the guest clusters in
    /// flight) and to map (L2 entries), not while the data is written, so the next cluster's
    /// allocation overlaps this one's data write; a request for a cluster in flight waits for it.
    func allocatingWrite(from source: UnsafeRawPointer, length: Int, at offset: UInt64,
                                 fua: Bool) async -> Result<Int, Qcow2Failure> {
        guard let allocator else { return .failure(Qcow2Failure(status: .readOnly)) }
        await allocator.lock.lock()
        guard !allocator.refusesWrites else {
            allocator.lock.unlock()
            return .failure(.corrupt)
        }
        if extendedL2 {
            // Subcluster allocation works a cluster at a time with the lock held throughout.
            defer { allocator.lock.unlock() }
            do {
                let written = try await allocateSubclustersAndWrite(allocator, from: source, length: length, at: offset)
                if fua && written > 0 { try await allocator.flush(io: io) }
                return .success(written)
            } catch {
                if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
                return .failure(error)
            }
        }
        let plan: Qcow2AllocationPlan
        do {
            switch try await planAllocation(allocator, length: length, at: offset) {
            case .allocated(let planned):
                plan = planned
            case .ownedAlready:
                allocator.lock.unlock()
                return .success(0)
            case .inFlight(let guestCluster):
                await allocator.waitForAllocation(ofGuestCluster: guestCluster)
                return .success(0)
            }
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            allocator.lock.unlock()
            return .failure(error)
        }
        allocator.lock.unlock()
        var failure: Qcow2Failure?
        do {
            try await writeData(plan, from: source)
        } catch {
            failure = error
        }
        await allocator.lock.lock()
        defer {
            allocator.finishAllocation(ofGuestClusters: plan.firstGuestCluster, count: plan.replaced.count)
            replacedPool.append(plan.replaced)
            allocator.lock.unlock()
        }
        if let failure { return .failure(failure) }
        do {
            // The data is written: map it, and drop the old references once the mapping is durable.
            for index in 0..<plan.replaced.count {
                let host = plan.hostBase + UInt64(index * metadata.clusterSize)
                try await allocator.setTableWord(host | Qcow2ClusterMapping.copiedFlag, tableOffset: plan.table,
                                                 index: plan.firstIndex + index, io: io)
                allocator.refcounts.releaseAfterFlush(allocator.referencedClusters(of: plan.replaced[index]))
            }
            if fua { try await allocator.flush(io: io) }
            return .success(plan.covered)
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            return .failure(error)
        }
    }

    enum PlanOutcome {
        case allocated(Qcow2AllocationPlan)
        /// The first cluster is this image's own now: overwrite it.
        case ownedAlready
        /// Another request is allocating the first cluster.
        case inFlight(guestCluster: UInt64)
    }

    /// With the lock held: the clusters to allocate (not owned, not in flight, in this table,
    /// covered by the request), their host clusters, and the zeroed file space they need.
    func planAllocation(_ allocator: Qcow2Allocator, length: Int, at offset: UInt64) async throws(Qcow2Failure) -> PlanOutcome {
        let clusterSize = metadata.clusterSize
        let (l1Index, l2Index, inCluster) = metadata.locate(offset)
        let firstGuestCluster = offset >> UInt64(metadata.clusterBits)
        if allocator.isInFlight(guestCluster: firstGuestCluster) { return .inFlight(guestCluster: firstGuestCluster) }
        let table = try await allocator.writableTable(l1Index: l1Index, io: io)
        var replaced = replacedPool.popLast() ?? []
        replaced.removeAll(keepingCapacity: true)
        var covered = 0
        while l2Index + replaced.count < metadata.l2Entries && covered < length {
            if !replaced.isEmpty && allocator.isInFlight(guestCluster: firstGuestCluster + UInt64(replaced.count)) { break }
            let entry = try await allocator.tableWord(table, index: l2Index + replaced.count, io: io)
            if entry & Qcow2ClusterMapping.copiedFlag != 0,
               case .normal = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile) { break }
            replaced.append(entry)
            covered += min(length - covered, clusterSize - (replaced.count == 1 ? inCluster : 0))
        }
        guard !replaced.isEmpty else {
            replacedPool.append(replaced)
            return .ownedAlready
        }
        let neverUsedFrom = allocator.refcounts.endCluster
        let hostBase = try await allocateHostClusters(allocator, count: replaced.count, guestCluster: firstGuestCluster << UInt64(metadata.clusterBits))
        // Clusters never used before read as zeros once the file reaches past them, so their
        // copy-on-write of zeros can be skipped (`writeMerged`). Not so in a data file, whose
        // clusters sit at their guest offsets and may hold old data.
        // The zeros start past every cluster ever used, not at the file's end: the end can lie
        // inside a cluster in use (a short table written last, a cluster freed and reused) whose
        // data write is in flight, and zeros landing after it would erase that data.
        let zerosFrom = max(fileState.current.sizeBytes, neverUsedFrom << UInt64(metadata.clusterBits))
        let fresh = !hasDataFile && hostBase >> UInt64(metadata.clusterBits) >= neverUsedFrom
            ? await allocator.extendFile(toCover: hostBase + UInt64(replaced.count * clusterSize), fileSize: zerosFrom, io: io)
            : false
        allocator.startAllocation(ofGuestClusters: firstGuestCluster, count: replaced.count)
        return .allocated(Qcow2AllocationPlan(table: table, firstIndex: l2Index, firstGuestCluster: firstGuestCluster,
                                              inCluster: inCluster, covered: covered, hostBase: hostBase, fresh: fresh,
                                              replaced: replaced))
    }

    /// Writes a plan's data: merged partial clusters at either end, whole ones in between.
    func writeData(_ plan: Qcow2AllocationPlan, from source: UnsafeRawPointer) async throws(Qcow2Failure) {
        let clusterSize = metadata.clusterSize
        let count = plan.replaced.count
        let inCluster = plan.inCluster
        let covered = plan.covered
        let guestBase = plan.firstGuestCluster << UInt64(metadata.clusterBits)
        // Bytes of the last cluster the request covers.
        let endInLast = inCluster + covered - (count - 1) * clusterSize
        var consumed = 0
        var firstWhole = 0
        if inCluster != 0 || (count == 1 && endInLast < clusterSize) {
            let part = min(covered, clusterSize - inCluster)
            try await writeMerged(from: source, length: part, inCluster: inCluster, oldEntry: plan.replaced[0],
                                  guestCluster: guestBase, host: plan.hostBase, fresh: plan.fresh)
            consumed = part
            firstWhole = 1
        }
        let lastWhole = endInLast == clusterSize ? count : count - 1
        if lastWhole > firstWhole {
            let bytes = (lastWhole - firstWhole) * clusterSize
            try await dataIO.write(from: source + consumed, length: bytes, at: plan.hostBase + UInt64(firstWhole * clusterSize), event: .none)
            consumed += bytes
        }
        if lastWhole < count && count > firstWhole {
            let index = count - 1
            try await writeMerged(from: source + consumed, length: covered - consumed, inCluster: 0, oldEntry: plan.replaced[index],
                                  guestCluster: guestBase + UInt64(index * clusterSize), host: plan.hostBase + UInt64(index * clusterSize),
                                  fresh: plan.fresh)
        }
    }

    /// Writes one whole cluster at `host`: its old contents with `length` bytes of `source`
    /// placed at `inCluster`. When the old contents are zeros and the cluster is `fresh` (never
    /// used, inside a zeroed extension of the file), only the new bytes are written.
    func writeMerged(from source: UnsafeRawPointer, length: Int, inCluster: Int, oldEntry: UInt64,
                             guestCluster: UInt64, host: UInt64, fresh: Bool) async throws(Qcow2Failure) {
        if fresh, readsAsZeros(oldEntry) {
            try await dataIO.write(from: source, length: length, at: host + UInt64(inCluster), event: .none)
            return
        }
        let buffer = clusterPool.take()
        defer { clusterPool.give(buffer) }
        try await readOldContents(into: buffer.base, entry: oldEntry, guestCluster: guestCluster)
        (buffer.base + inCluster).copyMemory(from: source, byteCount: length)
        try await dataIO.write(from: buffer.base, length: metadata.clusterSize, at: host, event: .cowWrite)
    }

    /// Host clusters for `count` guest clusters from `guestCluster`: with an external data file
    /// the guest offset itself (QEMU's do_alloc_cluster_offset; no refcounts there, and a raw
    /// data file stays a raw image), otherwise newly counted clusters of the image file.
    func allocateHostClusters(_ allocator: Qcow2Allocator, count: Int, guestCluster: UInt64) async throws(Qcow2Failure) -> UInt64 {
        if hasDataFile { return guestCluster }
        let host = try await allocator.refcounts.allocate(count, io: io) << UInt64(metadata.clusterBits)
        try allocator.checkOverlap(offset: host, length: count * metadata.clusterSize, kind: .data)
        return host
    }

    /// Whether a cluster mapped by `entry` reads as zeros without reading anything.
    func readsAsZeros(_ entry: UInt64) -> Bool {
        switch Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits) {
        case .zero: true
        case .unallocated: backing == nil
        case .normal, .compressed, .corrupt: false
        }
    }

    /// A guest cluster's contents as the L2 entry `entry` maps them, for copy-on-write.
    func readOldContents(into base: UnsafeMutableRawPointer, entry: UInt64, guestCluster: UInt64) async throws(Qcow2Failure) {
        let clusterSize = metadata.clusterSize
        let status: IOStatus
        switch Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile) {
        case .unallocated:
            status = await readBacking(into: base, length: clusterSize, at: guestCluster)
        case .zero:
            base.initializeMemory(as: UInt8.self, repeating: 0, count: clusterSize)
            status = .ok
        case .normal(let host):
            status = await readData(into: base, length: clusterSize, at: host)
        case .compressed(let host, let bytes):
            status = await readCompressed(into: base, length: clusterSize, inCluster: 0, hostOffset: host, compressedBytes: bytes)
        case .corrupt:
            status = .ioError
        }
        guard status.isOK else { throw Qcow2Failure(status: status) }
    }
}
