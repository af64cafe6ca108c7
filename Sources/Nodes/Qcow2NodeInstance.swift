import Glibc
import StrataGraph
import StrataRuntime

/// A qcow2 node on one queue. A request is split per guest cluster and mapped through L1 and L2.
/// Reads: runs of contiguous normal clusters become one read of the file child, zero clusters are
/// zero-filled, unallocated ones come from the backing node (zeros past its end, or without one),
/// compressed ones are read and inflated. Writes to clusters this image owns (COPIED) go straight
/// to the file, without a lock; writes that need clusters allocated take the node's allocation
/// lock and go through `Qcow2Allocator`, merging the copy-on-write of partial clusters into the
/// data write. The buffers for a table miss, a copy-on-write and compressed data belong to the
/// instance, so reads and overwrites of allocated clusters allocate nothing.
///
/// Images with extended L2 entries map each cluster's 32 subclusters separately (see
/// Qcow2NodeInstance+Subclusters.swift); images with an external data file keep data clusters in
/// the `data-file` child at the host offsets the L2 entries name, metadata in `file`.
actor Qcow2NodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let executor: QueueExecutor
    let metadata: Qcow2Metadata
    /// Nil when the node is read-only.
    let allocator: Qcow2Allocator?
    /// Metadata I/O on the `file` child (it flushes the data file before metadata write-back).
    let io: Qcow2ChildIO
    /// Data cluster I/O: the `data-file` child, or `file` without one.
    let dataIO: Qcow2ChildIO
    private let fileState: ChildStateReference
    let backing: NodeHandle?
    private let backingSizeBytes: UInt64
    /// Copied from the metadata so the per-request checks are plain loads.
    let extendedL2: Bool
    let hasDataFile: Bool
    /// The data file must stay a raw image of the guest: zeroes and discards reach it too.
    private let rawDataFile: Bool
    /// Cluster-sized buffers for L2 tables read on a miss and for copy-on-write. Requests
    /// interleave on this actor while one waits for the file, so each borrows its own buffer.
    let clusterPool: BounceBufferPool
    /// Made on the first compressed cluster: 2 clusters of compressed input (the most an L2 entry
    /// can describe), then one of output.
    private var compressedPool: BounceBufferPool?
    private var decompressor: Qcow2Decompressor?
    private var compressor: Qcow2Compressor?
    /// Where this instance last found L2 tables in the shared cache, by table (direct-mapped),
    /// so that lookups of hot tables take no lock.
    private var slotMemo = [Int](repeating: -1, count: slotMemoSize)
    private static let slotMemoSize = 64
    /// Arrays for the old L2 entries an allocating write replaces, reused so that allocating
    /// writes do not allocate them each time.
    private var replacedPool: [[UInt64]] = []
    private var zstdDecompressor: Qcow2ZstdDecompressor?
    private var zstdCompressor: Qcow2ZstdCompressor?

    init(metadata: Qcow2Metadata, allocator: Qcow2Allocator?, file: any BlockNode, fileState: ChildStateReference,
         dataFile: (any BlockNode)?, backing: (any BlockNode)?, backingSizeBytes: UInt64, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.executor = queue.executor
        self.metadata = metadata
        self.allocator = allocator
        let dataHandle = dataFile.map { NodeHandle($0) }
        self.io = Qcow2ChildIO(file: NodeHandle(file), dataFile: dataHandle)
        self.dataIO = Qcow2ChildIO(file: dataHandle ?? NodeHandle(file))
        extendedL2 = metadata.extendedL2
        hasDataFile = metadata.hasDataFile
        rawDataFile = metadata.header.hasRawDataFile
        self.fileState = fileState
        self.backing = backing.map { NodeHandle($0) }
        self.backingSizeBytes = backingSizeBytes
        clusterPool = BounceBufferPool(count: 4, bufferSize: metadata.clusterSize, alignment: 4096, numaNode: queue.executor.numaNode)
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        await serve(request)
    }

    private func serve(_ request: BlockRequest) async -> IOStatus {
        if request.operation == .flush { return await flush() }
        let status = request.rangeStatus(sizeBytes: metadata.header.sizeBytes)
        guard status.isOK, request.lengthBytes > 0 else { return status }
        if request.operation.isWrite && !metadata.guestChanged.load(ordering: .relaxed) {
            metadata.guestChanged.store(true, ordering: .relaxed)
        }
        switch request.operation {
        case .read:
            guard let base = request.buffer.base else { return .invalid }
            return await read(into: base, length: request.lengthBytes, at: request.offsetBytes)
        case .write:
            guard let base = request.buffer.base else { return .invalid }
            guard allocator != nil else { return .readOnly }
            if request.flags.contains(.compressed) {
                return await compressedWrite(from: UnsafeRawPointer(base), length: request.lengthBytes, at: request.offsetBytes)
            }
            return await write(from: UnsafeRawPointer(base), length: request.lengthBytes, at: request.offsetBytes,
                               fua: request.flags.contains(.fua))
        case .writeZeroes, .discard:
            guard allocator != nil else { return .readOnly }
            return await zeroOrDiscard(request)
        case .flush:
            return .ok
        case .spliceRead:
            return await spliceRead(request)
        }
    }

    // MARK: Write

    private func write(from source: UnsafeRawPointer, length: Int, at offset: UInt64, fua: Bool) async -> IOStatus {
        // A run of owned clusters contiguous in guest and file, not written yet.
        var runHost: UInt64 = 0
        var runStart = 0
        var runLength = 0
        var done = 0
        let flags: RequestFlags = fua ? .fua : []
        while done < length {
            let guestOffset = offset + UInt64(done)
            let (l1Index, l2Index, inCluster) = metadata.locate(guestOffset)
            let chunk = min(length - done, metadata.clusterSize - inCluster)
            let entry: UInt64
            let bitmap: UInt64
            switch await l2Entry(l1Index: l1Index, l2Index: l2Index) {
            case .success(let value): (entry, bitmap) = value
            case .failure(let error): return error.status
            }
            // With subclusters, only writes whose every subcluster is allocated overwrite in place.
            if entry & Qcow2ClusterMapping.copiedFlag != 0,
               case .normal(let hostCluster) = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile),
               !extendedL2 || Qcow2SubclusterBitmap(bitmap).allowsOverwrite(inCluster: inCluster, length: chunk, subclusterBits: metadata.subclusterBits) {
                let host = hostCluster + UInt64(inCluster)
                if runLength > 0 && runStart + runLength == done && runHost + UInt64(runLength) == host {
                    runLength += chunk
                } else {
                    if runLength > 0 {
                        let status = await writeFile(from: source + runStart, length: runLength, at: runHost, flags: flags)
                        guard status.isOK else { return status }
                    }
                    (runHost, runStart, runLength) = (host, done, chunk)
                }
                done += chunk
                continue
            }
            if runLength > 0 {
                let status = await writeFile(from: source + runStart, length: runLength, at: runHost, flags: flags)
                guard status.isOK else { return status }
                runLength = 0
            }
            switch await allocatingWrite(from: source + done, length: length - done, at: guestOffset, fua: fua) {
            case .success(let written): done += written
            case .failure(let error): return error.status
            }
        }
        if runLength > 0 { return await writeFile(from: source + runStart, length: runLength, at: runHost, flags: flags) }
        return .ok
    }

    private func writeFile(from source: UnsafeRawPointer, length: Int, at offset: UInt64, flags: RequestFlags) async -> IOStatus {
        do {
            try await dataIO.write(from: source, length: length, at: offset, flags: flags)
            return .ok
        } catch {
            return error.status
        }
    }

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
    private func allocatingWrite(from source: UnsafeRawPointer, length: Int, at offset: UInt64,
                                 fua: Bool) async -> Result<Int, Qcow2Failure> {
        guard let allocator else { return .failure(Qcow2Failure(status: .readOnly)) }
        await allocator.lock.lock()
        guard !allocator.isCorrupt else {
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

    private enum PlanOutcome {
        case allocated(Qcow2AllocationPlan)
        /// The first cluster is this image's own now: overwrite it.
        case ownedAlready
        /// Another request is allocating the first cluster.
        case inFlight(guestCluster: UInt64)
    }

    /// With the lock held: the clusters to allocate (not owned, not in flight, in this table,
    /// covered by the request), their host clusters, and the zeroed file space they need.
    private func planAllocation(_ allocator: Qcow2Allocator, length: Int, at offset: UInt64) async throws(Qcow2Failure) -> PlanOutcome {
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
        let fresh = !hasDataFile && hostBase >> UInt64(metadata.clusterBits) >= neverUsedFrom
            ? await allocator.extendFile(toCover: hostBase + UInt64(replaced.count * clusterSize), fileSize: fileState.current.sizeBytes, io: io)
            : false
        allocator.startAllocation(ofGuestClusters: firstGuestCluster, count: replaced.count)
        return .allocated(Qcow2AllocationPlan(table: table, firstIndex: l2Index, firstGuestCluster: firstGuestCluster,
                                              inCluster: inCluster, covered: covered, hostBase: hostBase, fresh: fresh,
                                              replaced: replaced))
    }

    /// Writes a plan's data: merged partial clusters at either end, whole ones in between.
    private func writeData(_ plan: Qcow2AllocationPlan, from source: UnsafeRawPointer) async throws(Qcow2Failure) {
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
            try await dataIO.write(from: source + consumed, length: bytes, at: plan.hostBase + UInt64(firstWhole * clusterSize))
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
    private func writeMerged(from source: UnsafeRawPointer, length: Int, inCluster: Int, oldEntry: UInt64,
                             guestCluster: UInt64, host: UInt64, fresh: Bool) async throws(Qcow2Failure) {
        if fresh, readsAsZeros(oldEntry) {
            try await dataIO.write(from: source, length: length, at: host + UInt64(inCluster))
            return
        }
        let buffer = clusterPool.take()
        defer { clusterPool.give(buffer) }
        try await readOldContents(into: buffer.base, entry: oldEntry, guestCluster: guestCluster)
        (buffer.base + inCluster).copyMemory(from: source, byteCount: length)
        try await dataIO.write(from: buffer.base, length: metadata.clusterSize, at: host)
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
    private func readsAsZeros(_ entry: UInt64) -> Bool {
        switch Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits) {
        case .zero: true
        case .unallocated: backing == nil
        case .normal, .compressed, .corrupt: false
        }
    }

    /// A guest cluster's contents as the L2 entry `entry` maps them, for copy-on-write.
    private func readOldContents(into base: UnsafeMutableRawPointer, entry: UInt64, guestCluster: UInt64) async throws(Qcow2Failure) {
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

    // MARK: Compressed write

    /// Stores one whole cluster (or the image's last, partial one) deflated, packed into host
    /// clusters shared with other compressed clusters, as QEMU's qcow2_co_pwritev_compressed.
    /// Data that does not shrink is written as a normal cluster. Like QEMU, it only fills clusters
    /// that hold nothing yet.
    private func compressedWrite(from source: UnsafeRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        guard let allocator else { return .readOnly }
        let clusterSize = metadata.clusterSize
        guard offset % UInt64(clusterSize) == 0,
              length == clusterSize || (length < clusterSize && offset + UInt64(length) == metadata.header.sizeBytes) else {
            return .invalid
        }
        // Data files hold no compressed clusters (QEMU refuses them too).
        guard !hasDataFile else { return .notSupported }
        let input: BounceBufferPool.Buffer = clusterPool.take()
        let output: BounceBufferPool.Buffer = clusterPool.take()
        defer {
            clusterPool.give(output)
            clusterPool.give(input)
        }
        // A short last cluster is compressed as a whole cluster padded with zeros, as QEMU does.
        input.base.copyMemory(from: source, byteCount: length)
        if length < clusterSize { (input.base + length).initializeMemory(as: UInt8.self, repeating: 0, count: clusterSize - length) }
        guard let compressedBytes = compress(input.base, clusterSize, into: output.base, capacity: clusterSize - 1) else {
            return await write(from: source, length: length, at: offset, fua: false)
        }
        await allocator.lock.lock()
        while allocator.isInFlight(guestCluster: offset / UInt64(clusterSize)) {
            await allocator.waitForAllocation(ofGuestCluster: offset / UInt64(clusterSize))
            await allocator.lock.lock()
        }
        defer { allocator.lock.unlock() }
        guard !allocator.isCorrupt else { return .ioError }
        do {
            let (l1Index, l2Index, _) = metadata.locate(offset)
            let table = try await allocator.writableTable(l1Index: l1Index, io: io)
            let old = try await allocator.tableWord(table, index: l2Index, io: io)
            switch Qcow2ClusterMapping(l2Entry: old, clusterBits: metadata.clusterBits) {
            case .unallocated: break
            case .zero where old & Qcow2ClusterMapping.offsetMask == 0: break
            default: return .ioError
            }
            let host = try await allocator.refcounts.allocateBytes(compressedBytes, io: io)
            try allocator.checkOverlap(offset: host, length: compressedBytes, kind: .data)
            try await io.write(from: output.base, length: compressedBytes, at: host)
            // Additional 512-byte sectors the data touches, in the bits above the offset.
            let sizeShift = 62 - UInt64(metadata.clusterBits - 8)
            let extraSectors = ((host + UInt64(compressedBytes) - 1) >> 9) - (host >> 9)
            let entry = Qcow2ClusterMapping.compressedFlag | (extraSectors << sizeShift) | host
            try await allocator.setTableWord(entry, tableOffset: table, index: l2Index, io: io)
            return .ok
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            return error.status
        }
    }

    /// Compresses with the image's compression type (header byte 104): zlib or zstd.
    private func compress(_ input: UnsafeRawPointer, _ count: Int, into output: UnsafeMutableRawPointer, capacity: Int) -> Int? {
        if metadata.header.compressionType == 1 {
            if zstdCompressor == nil { zstdCompressor = Qcow2ZstdCompressor() }
            return zstdCompressor?.compress(input: input, inputCount: count, output: output, outputCapacity: capacity)
        }
        if compressor == nil { compressor = Qcow2Compressor() }
        return compressor?.compress(input: input, inputCount: count, output: output, outputCapacity: capacity)
    }

    // MARK: Write zeroes, discard, flush

    /// Whole clusters become zero clusters (v3) or unallocated ones (discard, or zeroes in a v2
    /// image without a backing file); the parts of partial clusters are written as zeros, or left
    /// alone by a discard, which is only a hint.
    private func zeroOrDiscard(_ request: BlockRequest) async -> IOStatus {
        guard let allocator else { return .readOnly }
        let clusterSize = UInt64(metadata.clusterSize)
        let start = request.offsetBytes
        let end = start + UInt64(request.lengthBytes)
        // The last cluster of the image counts as whole up to the image's end.
        let size = metadata.header.sizeBytes
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
                    try await dataIO.writeZeroes(length: Int(zeroEnd - zeroStart), at: zeroStart)
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
        guard !allocator.isCorrupt else { return .ioError }
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
    private func replacement(for old: UInt64, discard: Bool, mayUnmap: Bool) -> UInt64 {
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
    private func zeroPart(from start: UInt64, to end: UInt64) async -> IOStatus {
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

    private func flush() async -> IOStatus {
        if let allocator {
            await allocator.lock.lock()
            defer { allocator.lock.unlock() }
            do {
                try await allocator.flush(io: io)
            } catch {
                return error.status
            }
        } else {
            let status = await io.file.node.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
            guard status.isOK else { return status }
        }
        guard let backing else { return .ok }
        return await backing.node.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
    }

    // MARK: Read

    private func read(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        // A run of normal clusters that are contiguous in the file too, not read yet.
        var runHost: UInt64 = 0
        var runStart = 0
        var runLength = 0
        var done = 0
        while done < length {
            let guestOffset = offset + UInt64(done)
            let (l1Index, l2Index, inCluster) = metadata.locate(guestOffset)
            var chunk = min(length - done, metadata.clusterSize - inCluster)
            var mapping: Qcow2ClusterMapping
            let bitmap: UInt64
            switch await l2Entry(l1Index: l1Index, l2Index: l2Index) {
            case .success(let (entry, bits)):
                mapping = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile)
                bitmap = bits
            case .failure(let error): return error.status
            }
            if extendedL2 {
                // The run of subclusters from here that read alike.
                guard let run = Qcow2SubclusterBitmap(bitmap).mapping(of: mapping, inCluster: inCluster, length: chunk,
                                                                      subclusterBits: metadata.subclusterBits) else { return .ioError }
                (mapping, chunk) = run
            }
            switch mapping {
            case .normal(let hostCluster):
                let host = hostCluster + UInt64(inCluster)
                // Contiguous in the guest (no other kind of cluster in between) and in the file.
                if runLength > 0 && runStart + runLength == done && runHost + UInt64(runLength) == host {
                    runLength += chunk
                } else {
                    if runLength > 0 {
                        let status = await readData(into: base + runStart, length: runLength, at: runHost)
                        guard status.isOK else { return status }
                    }
                    (runHost, runStart, runLength) = (host, done, chunk)
                }
            case .zero:
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
            case .unallocated:
                let status = await readBacking(into: base + done, length: chunk, at: guestOffset)
                guard status.isOK else { return status }
            case .compressed(let hostOffset, let compressedBytes):
                let status = await readCompressed(into: base + done, length: chunk, inCluster: inCluster,
                                                  hostOffset: hostOffset, compressedBytes: compressedBytes)
                guard status.isOK else { return status }
            case .corrupt:
                return .ioError
            }
            done += chunk
        }
        if runLength > 0 { return await readData(into: base + runStart, length: runLength, at: runHost) }
        return .ok
    }

    /// Splices a range whose clusters are all plain data clusters from the data file into the
    /// caller's pipe, one request per run contiguous in the file. Anything else (zero, compressed,
    /// unallocated or subclustered clusters) answers ENOTSUP before a byte moves; a range that
    /// changed under the splice answers EAGAIN (the pipe holds part of it).
    private func spliceRead(_ request: BlockRequest) async -> IOStatus {
        guard !extendedL2 else { return .notSupported }
        for pass in 0..<2 {
            var runHost: UInt64 = 0
            var runLength = 0
            var done = 0
            var moved = 0
            while done <= request.lengthBytes {
                var host: UInt64 = 0
                var chunk = 0
                if done < request.lengthBytes {
                    let (l1Index, l2Index, inCluster) = metadata.locate(request.offsetBytes + UInt64(done))
                    chunk = min(request.lengthBytes - done, metadata.clusterSize - inCluster)
                    guard case .success(let (entry, _)) = await l2Entry(l1Index: l1Index, l2Index: l2Index),
                          case .normal(let hostCluster) = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile)
                    else { return pass == 0 || moved == 0 ? .notSupported : IOStatus(errno: EAGAIN) }
                    host = hostCluster + UInt64(inCluster)
                    if runLength > 0 && runHost + UInt64(runLength) == host {
                        runLength += chunk
                        done += chunk
                        continue
                    }
                }
                if pass == 1 && runLength > 0 {
                    var part = request
                    part.offsetBytes = runHost
                    part.lengthBytes = runLength
                    let status = await dataIO.file.node.submit(part)
                    guard status.isOK else { return moved == 0 || status != .notSupported ? status : IOStatus(errno: EAGAIN) }
                    moved += runLength
                }
                if done == request.lengthBytes { break }
                (runHost, runLength) = (host, chunk)
                done += chunk
            }
        }
        return .ok
    }

    /// The L2 entry for a guest cluster and its subcluster bitmap (0 without extended L2
    /// entries): (0, 0) (unallocated) when its L1 entry is empty, from the cache, or read from the
    /// file on a miss. With subclusters, bit 0 of the entry is reserved (no zero flag): dropped.
    func l2Entry(l1Index: Int, l2Index: Int) async -> Result<(UInt64, UInt64), Qcow2Failure> {
        let tableOffset = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
        if tableOffset == 0 { return .success((0, 0)) }
        // The slot this instance last found the table in: checked without a lock.
        let memo = Int(truncatingIfNeeded: tableOffset >> UInt64(metadata.clusterBits)) & (Self.slotMemoSize - 1)
        let slot = slotMemo[memo]
        if extendedL2 {
            // With subclusters, bit 0 of the entry is reserved (no zero flag): dropped.
            if slot >= 0, let (entry, bitmap) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * l2Index, slot: slot) {
                return .success((entry & ~Qcow2ClusterMapping.zeroFlag, bitmap))
            }
            if let (entry, bitmap, slot) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * l2Index) {
                slotMemo[memo] = slot
                return .success((entry & ~Qcow2ClusterMapping.zeroFlag, bitmap))
            }
        } else {
            if slot >= 0, let entry = metadata.l2Cache.entry(tableOffset: tableOffset, index: l2Index, slot: slot) { return .success((entry, 0)) }
            if let (entry, slot) = metadata.l2Cache.entry(tableOffset: tableOffset, index: l2Index) {
                slotMemo[memo] = slot
                return .success((entry, 0))
            }
        }
        let clusterSize = UInt64(metadata.clusterSize)
        let fileSizeBytes = fileState.current.sizeBytes
        // An L2 table must be a whole cluster inside the file and not the header: QEMU calls
        // anything else corruption.
        guard tableOffset % clusterSize == 0, tableOffset >= clusterSize, tableOffset <= fileSizeBytes,
              fileSizeBytes - tableOffset >= clusterSize else { return .failure(Qcow2Failure(status: .ioError)) }
        let buffer = clusterPool.take()
        defer { clusterPool.give(buffer) }
        let status = await readFile(into: buffer.base, length: metadata.clusterSize, at: tableOffset)
        guard status.isOK else { return .failure(Qcow2Failure(status: status)) }
        metadata.l2Cache.insert(tableOffset: tableOffset, from: buffer.base)
        let word = metadata.l2EntryWords * l2Index
        let entry = UInt64(bigEndian: buffer.base.loadUnaligned(fromByteOffset: word * 8, as: UInt64.self))
        guard extendedL2 else { return .success((entry, 0)) }
        return .success((entry & ~Qcow2ClusterMapping.zeroFlag,
                         UInt64(bigEndian: buffer.base.loadUnaligned(fromByteOffset: word * 8 + 8, as: UInt64.self))))
    }

    /// Metadata (L2 tables, compressed clusters) from the `file` child.
    private func readFile(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        await io.file.node.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                            buffer: IOBuffer(base: base, count: length)))
    }

    /// Data clusters, from the data file when the image has one.
    func readData(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        await dataIO.file.node.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                                buffer: IOBuffer(base: base, count: length)))
    }

    /// Guest bytes no cluster of this image holds: the backing node's up to its end, zeros past it.
    func readBacking(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        let available = offset < backingSizeBytes ? Int(min(UInt64(length), backingSizeBytes - offset)) : 0
        if let backing, available > 0 {
            let status = await backing.node.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: available,
                                                                buffer: IOBuffer(base: base, count: available)))
            guard status.isOK else { return status }
        }
        if available < length || backing == nil {
            let start = backing == nil ? 0 : available
            (base + start).initializeMemory(as: UInt8.self, repeating: 0, count: length - start)
        }
        return .ok
    }

    /// Reads a compressed cluster's deflate data (clipped at the end of the file, the rest zero,
    /// as QEMU reads it) and inflates the whole cluster, then copies out the requested part.
    func readCompressed(into base: UnsafeMutableRawPointer, length: Int, inCluster: Int,
                        hostOffset: UInt64, compressedBytes: Int) async -> IOStatus {
        let clusterSize = metadata.clusterSize
        let fileSizeBytes = fileState.current.sizeBytes
        // QEMU calls a compressed cluster in an image with a data file corruption.
        guard !hasDataFile, hostOffset >= UInt64(clusterSize), hostOffset < fileSizeBytes,
              compressedBytes <= 2 * clusterSize else { return .ioError }
        let pool: BounceBufferPool
        if let compressedPool {
            pool = compressedPool
        } else {
            pool = BounceBufferPool(count: 1, bufferSize: 3 * clusterSize, alignment: 4096, numaNode: executor.numaNode)
            compressedPool = pool
        }
        let buffer = pool.take()
        defer { pool.give(buffer) }
        let inputCount = Int(min(UInt64(compressedBytes), fileSizeBytes - hostOffset))
        let status = await readFile(into: buffer.base, length: inputCount, at: hostOffset)
        guard status.isOK else { return status }
        let output = buffer.base + 2 * clusterSize
        guard decompress(input: buffer.base, inputCount: inputCount, output: output, outputCount: clusterSize) else {
            return .ioError
        }
        base.copyMemory(from: output + inCluster, byteCount: length)
        return .ok
    }

    /// One cluster from its compressed data, with the image's compression type (header byte 104).
    private func decompress(input: UnsafeMutableRawPointer, inputCount: Int, output: UnsafeMutableRawPointer, outputCount: Int) -> Bool {
        if metadata.header.compressionType == 1 {
            if zstdDecompressor == nil { zstdDecompressor = Qcow2ZstdDecompressor() }
            guard let zstdDecompressor else { return false }
            return zstdDecompressor.decompress(input: input, inputCount: inputCount, output: output, outputCount: outputCount)
        }
        if decompressor == nil { decompressor = Qcow2Decompressor() }
        guard let decompressor else { return false }
        return decompressor.inflate(input: input, inputCount: inputCount, output: output, outputCount: outputCount)
    }
}
