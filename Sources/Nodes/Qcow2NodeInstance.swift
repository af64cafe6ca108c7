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
    private var zstdDecompressor: Qcow2ZstdDecompressor?
    /// Old L2 entries of the clusters one allocating write replaces (lock held: one at a time).
    private var replaced: [UInt64]

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
        clusterPool = BounceBufferPool(count: 2, bufferSize: metadata.clusterSize, alignment: 4096, numaNode: queue.executor.numaNode)
        replaced = []
        replaced.reserveCapacity(metadata.l2Entries)
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        await serve(request)
    }

    private func serve(_ request: BlockRequest) async -> IOStatus {
        if request.operation == .flush { return await flush() }
        let status = request.rangeStatus(sizeBytes: metadata.header.sizeBytes)
        guard status.isOK, request.lengthBytes > 0 else { return status }
        switch request.operation {
        case .read:
            guard let base = request.buffer.base else { return .invalid }
            return await read(into: base, length: request.lengthBytes, at: request.offsetBytes)
        case .write:
            guard let base = request.buffer.base else { return .invalid }
            guard allocator != nil else { return .readOnly }
            return await write(from: UnsafeRawPointer(base), length: request.lengthBytes, at: request.offsetBytes,
                               fua: request.flags.contains(.fua))
        case .writeZeroes, .discard:
            guard allocator != nil else { return .readOnly }
            return await zeroOrDiscard(request)
        case .flush:
            return .ok
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
    /// from `source`. Returns how many bytes of `source` it wrote: 0 when another queue
    /// allocated the cluster meanwhile (the caller then overwrites it).
    private func allocatingWrite(from source: UnsafeRawPointer, length: Int, at offset: UInt64,
                                 fua: Bool) async -> Result<Int, Qcow2Failure> {
        guard let allocator else { return .failure(Qcow2Failure(status: .readOnly)) }
        await allocator.lock.lock()
        defer { allocator.lock.unlock() }
        guard !allocator.isCorrupt else { return .failure(.corrupt) }
        do {
            let written = extendedL2 ? try await allocateSubclustersAndWrite(allocator, from: source, length: length, at: offset)
                : try await allocateAndWrite(allocator, from: source, length: length, at: offset)
            if fua && written > 0 { try await allocator.flush(io: io) }
            return .success(written)
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            return .failure(error)
        }
    }

    private func allocateAndWrite(_ allocator: Qcow2Allocator, from source: UnsafeRawPointer, length: Int,
                                  at offset: UInt64) async throws(Qcow2Failure) -> Int {
        let clusterSize = metadata.clusterSize
        let (l1Index, l2Index, inCluster) = metadata.locate(offset)
        let table = try await allocator.writableTable(l1Index: l1Index, io: io)
        // The clusters to allocate: not owned, in this table, covered by the request.
        replaced.removeAll(keepingCapacity: true)
        var covered = 0
        while l2Index + replaced.count < metadata.l2Entries && covered < length {
            let entry = try await allocator.tableWord(table, index: l2Index + replaced.count, io: io)
            if entry & Qcow2ClusterMapping.copiedFlag != 0,
               case .normal = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile) { break }
            replaced.append(entry)
            covered += min(length - covered, clusterSize - (replaced.count == 1 ? inCluster : 0))
        }
        let count = replaced.count
        guard count > 0 else { return 0 }
        let guestBase = offset - UInt64(inCluster)
        let hostBase = try await allocateHostClusters(allocator, count: count, guestCluster: guestBase)
        // Bytes of the last cluster the request covers.
        let endInLast = inCluster + covered - (count - 1) * clusterSize
        var consumed = 0
        var firstWhole = 0
        if inCluster != 0 || (count == 1 && endInLast < clusterSize) {
            let part = min(covered, clusterSize - inCluster)
            try await writeMerged(from: source, length: part, inCluster: inCluster, oldEntry: replaced[0],
                                  guestCluster: guestBase, host: hostBase)
            consumed = part
            firstWhole = 1
        }
        let lastWhole = endInLast == clusterSize ? count : count - 1
        if lastWhole > firstWhole {
            let bytes = (lastWhole - firstWhole) * clusterSize
            try await dataIO.write(from: source + consumed, length: bytes, at: hostBase + UInt64(firstWhole * clusterSize))
            consumed += bytes
        }
        if lastWhole < count && count > firstWhole {
            let index = count - 1
            try await writeMerged(from: source + consumed, length: covered - consumed, inCluster: 0, oldEntry: replaced[index],
                                  guestCluster: guestBase + UInt64(index * clusterSize), host: hostBase + UInt64(index * clusterSize))
        }
        // The data is written: map it, and drop the old references once the mapping is durable.
        for index in 0..<count {
            let host = hostBase + UInt64(index * clusterSize)
            try await allocator.setTableWord(host | Qcow2ClusterMapping.copiedFlag, tableOffset: table, index: l2Index + index, io: io)
            allocator.refcounts.releaseAfterFlush(allocator.referencedClusters(of: replaced[index]))
        }
        return covered
    }

    /// Writes one whole cluster at `host`: its old contents with `length` bytes of `source`
    /// placed at `inCluster`.
    private func writeMerged(from source: UnsafeRawPointer, length: Int, inCluster: Int, oldEntry: UInt64,
                             guestCluster: UInt64, host: UInt64) async throws(Qcow2Failure) {
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
            if !canDeallocate && lastWhole > firstWhole {
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

    /// The L2 entry for a guest cluster and its subcluster bitmap (0 without extended L2
    /// entries): (0, 0) (unallocated) when its L1 entry is empty, from the cache, or read from the
    /// file on a miss. With subclusters, bit 0 of the entry is reserved (no zero flag): dropped.
    func l2Entry(l1Index: Int, l2Index: Int) async -> Result<(UInt64, UInt64), Qcow2Failure> {
        let tableOffset = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
        if tableOffset == 0 { return .success((0, 0)) }
        if extendedL2 {
            if let (entry, bitmap) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * l2Index) {
                return .success((entry & ~Qcow2ClusterMapping.zeroFlag, bitmap))
            }
        } else if let entry = metadata.l2Cache.entry(tableOffset: tableOffset, index: l2Index) {
            return .success((entry, 0))
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
