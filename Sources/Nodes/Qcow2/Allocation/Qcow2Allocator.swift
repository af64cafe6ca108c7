import StrataGraph
import StrataRuntime

/// The one place where a qcow2 node's metadata changes: cluster allocation, refcounts, L2 and L1
/// updates and their ordered write-back. Instances on every queue take `lock` before calling in
/// and do the I/O through their own file child, so the work stays on the caller's thread; reads
/// and overwrites of allocated clusters never take it.
///
/// Write-back order (`flush`): refcount blocks, flush, new refcount table entries, flush, L2
/// tables, flush, L1 entries, flush; then the references those writes dropped are counted down.
/// So after a crash every mapping on disk points at a cluster whose refcount is on disk, and at
/// worst clusters leak.
final class Qcow2Allocator: @unchecked Sendable {
    // Every stored property below `lock` is touched only while holding it; the class is shared by
    // the node's instances on all queues, which is why it is marked @unchecked Sendable.
    let lock = AsyncLock()
    let metadata: Qcow2Metadata
    let refcounts: Qcow2Refcounts
    let overlaps: Qcow2OverlapGuard
    var dirtyL1: Set<Int> = []
    /// The persistent bitmap directory as it was before open marked the bitmaps in use.
    var bitmapDirectory: (offset: UInt64, bytes: [UInt8])?
    /// The internal snapshot table: its entries and where it lies.
    var snapshots: [Qcow2Snapshot] = []
    var snapshotTableOffset: UInt64 = 0
    var snapshotTableBytes: UInt64 = 0
    /// Guest clusters being allocated, with the requests waiting for them.
    private var inFlight: [UInt64: [ParkedContinuation<Void>]] = [:]
    /// Everything from the file's end at open up to here was zeroed by `extendFile`.
    private(set) var zeroExtendedTo: UInt64 = 0
    private var canExtend = true
    static let extensionStep: UInt64 = 8 << 20
    private var incompatibleFeatures: UInt64
    /// Set once an overlap check failed: the image refuses further writes.
    var isCorrupt: Bool { overlaps.isCorrupt }

    /// Set once a write that switches a structure (the header's L1 table or refcount table, the
    /// snapshot table, a new size) failed or was not followed by a successful flush: it may or may
    /// not reach the disk, so what the disk names and what memory names may differ, and anything
    /// written from either could be lost. The node then writes no more metadata and refuses
    /// writes that would need it, until the image is opened again (fail-stop, as databases treat
    /// a failed fsync). The image on disk is left consistent either way.
    var isFenced: Bool { overlaps.isFenced }

    func fence() { overlaps.fence() }

    /// Writes that allocate or change metadata are refused: corrupt or fenced.
    var refusesWrites: Bool { isCorrupt || isFenced }

    private var clusterSize: Int { metadata.clusterSize }

    init(metadata: Qcow2Metadata, refcountTable: [UInt64], fileSizeBytes: UInt64, refcountCacheBlocks: Int) throws(Qcow2Failure) {
        let header = metadata.header
        self.metadata = metadata
        overlaps = Qcow2OverlapGuard(header: header)
        refcounts = try Qcow2Refcounts(header: header, table: refcountTable, fileSizeBytes: fileSizeBytes,
                                       cacheBlocks: refcountCacheBlocks, overlaps: overlaps)
        incompatibleFeatures = header.incompatibleFeatures
        for index in 0..<metadata.l1.count {
            let offset = metadata.l1[index] & Qcow2ClusterMapping.offsetMask
            if offset != 0 { overlaps.l2Tables.insert(offset) }
        }
    }

    // MARK: Overlap checks

    func checkOverlap(offset: UInt64, length: Int, kind: Qcow2MetadataKind) throws(Qcow2Failure) {
        try overlaps.check(offset: offset, length: length, kind: kind)
    }

    /// Sets the corrupt bit in a v3 header (best effort: the write that failed already failed).
    nonisolated(nonsending) func markCorrupt(io: Qcow2ChildIO) async {
        guard metadata.header.version == 3, incompatibleFeatures & Qcow2Header.corruptBit == 0 else { return }
        incompatibleFeatures |= Qcow2Header.corruptBit
        try? await writeFeatures(io: io)
    }

    private nonisolated(nonsending) func writeFeatures(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        var bytes = [UInt8](repeating: 0, count: 8)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: incompatibleFeatures.bigEndian, as: UInt64.self) }
        try await writeHeader(bytes, at: 72, io: io)
        try await io.flush()
    }

    nonisolated(nonsending) func writeHeader(_ bytes: [UInt8], at offset: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        try await io.write(bytes: bytes, at: offset, event: .otherMetadata)
    }

    // MARK: L2 tables

    /// The L2 table for `l1Index`, writable (its own, not shared with a snapshot) and cached:
    /// allocated empty when the L1 entry is empty, copied when it is shared.
    nonisolated(nonsending) func writableTable(l1Index: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        precondition(l1Index >= 0 && l1Index < metadata.l1.count, "L1 index \(l1Index) outside the table")
        let entry = metadata.l1[l1Index]
        let old = entry & Qcow2ClusterMapping.offsetMask
        if old != 0 && entry & Qcow2ClusterMapping.copiedFlag != 0 {
            try await ensureCached(old, io: io)
            return old
        }
        let cluster = try await refcounts.allocate(1, io: io)
        let offset = cluster << UInt64(metadata.clusterBits)
        try checkOverlap(offset: offset, length: clusterSize, kind: .l2Table)
        try await ensureRoom(io: io)
        if old == 0 {
            let installed = metadata.l2Cache.install(tableOffset: offset, from: nil)
            precondition(installed, "a fresh L2 table finds a free cache slot: ensureRoom made one")
        } else {
            let copy = UnsafeMutableRawPointer.allocate(byteCount: clusterSize, alignment: 4096)
            defer { copy.deallocate() }
            if !metadata.l2Cache.copy(tableOffset: old, into: copy) { try await readTable(old, into: copy, io: io) }
            try await ensureRoom(io: io)
            let installed = metadata.l2Cache.install(tableOffset: offset, from: copy)
            precondition(installed, "a copied L2 table finds a free cache slot: ensureRoom made one")
            refcounts.releaseAfterFlush([old >> UInt64(metadata.clusterBits)])
            // The old table is a snapshot's now, no longer active: once the snapshot goes, its
            // cluster may hold anything (QEMU's overlap checks cover active L2 tables too).
            overlaps.l2Tables.remove(old)
        }
        overlaps.l2Tables.insert(offset)
        metadata.l1.store(offset | Qcow2ClusterMapping.copiedFlag, at: l1Index)
        dirtyL1.insert(l1Index)
        return offset
    }

    /// Word `index` of the table at `tableOffset` as it stands now (lock held: authoritative).
    nonisolated(nonsending) func tableWord(_ tableOffset: UInt64, index: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        if let word = metadata.l2Cache.entry(tableOffset: tableOffset, index: index)?.word { return word }
        try await ensureCached(tableOffset, io: io)
        guard let word = metadata.l2Cache.entry(tableOffset: tableOffset, index: index)?.word else { throw .corrupt }
        return word
    }

    /// Extended entry `index` of the table at `tableOffset` and its subcluster bitmap (lock held).
    nonisolated(nonsending) func tableEntryPair(_ tableOffset: UInt64, index: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> (UInt64, UInt64) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        if let (entry, bitmap, _) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * index) { return (entry, bitmap) }
        try await ensureCached(tableOffset, io: io)
        guard let (entry, bitmap, _) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * index) else { throw .corrupt }
        return (entry, bitmap)
    }

    /// Stores extended entry `index` and its bitmap in the writable table at `tableOffset`.
    nonisolated(nonsending) func setTableEntryPair(_ entry: UInt64, _ bitmap: UInt64, tableOffset: UInt64, index: Int,
                                                   io: Qcow2ChildIO) async throws(Qcow2Failure) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        if metadata.l2Cache.storePair(entry, bitmap, tableOffset: tableOffset, index: 2 * index) { return }
        try await ensureCached(tableOffset, io: io)
        guard metadata.l2Cache.storePair(entry, bitmap, tableOffset: tableOffset, index: 2 * index) else { throw .corrupt }
    }

    /// Stores word `index` of the writable table at `tableOffset`.
    nonisolated(nonsending) func setTableWord(_ value: UInt64, tableOffset: UInt64, index: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        if metadata.l2Cache.store(value, tableOffset: tableOffset, index: index) { return }
        try await ensureCached(tableOffset, io: io)
        guard metadata.l2Cache.store(value, tableOffset: tableOffset, index: index) else { throw .corrupt }
    }

    private nonisolated(nonsending) func ensureCached(_ tableOffset: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        if metadata.l2Cache.contains(tableOffset: tableOffset) { return }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: clusterSize, alignment: 4096)
        defer { buffer.deallocate() }
        try await readTable(tableOffset, into: buffer, io: io)
        if metadata.l2Cache.insert(tableOffset: tableOffset, from: buffer) { return }
        try await flush(io: io)
        guard metadata.l2Cache.insert(tableOffset: tableOffset, from: buffer) else { throw .corrupt }
    }

    private nonisolated(nonsending) func readTable(_ tableOffset: UInt64, into buffer: UnsafeMutableRawPointer, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        guard tableOffset % UInt64(clusterSize) == 0, tableOffset >= UInt64(clusterSize) else { throw .corrupt }
        try await io.read(into: buffer, length: clusterSize, at: tableOffset, event: .l2Load)
    }

    /// Makes sure a table can be installed: when every cached table is dirty, writes them back.
    private nonisolated(nonsending) func ensureRoom(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        if metadata.l2Cache.isFullOfDirtyTables { try await flush(io: io) }
    }

    // MARK: Allocations in flight

    /// Marks guest clusters whose data is being written into new host clusters, unmapped yet.
    func startAllocation(ofGuestClusters first: UInt64, count: Int) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        precondition(count > 0, "an allocation covers at least one cluster")
        assert((first..<first + UInt64(count)).allSatisfy { inFlight[$0] == nil }, "a guest cluster is allocated by one request at a time")
        for cluster in first..<first + UInt64(count) { inFlight[cluster] = [] }
    }

    func isInFlight(guestCluster: UInt64) -> Bool { inFlight[guestCluster] != nil }

    /// Ends those allocations and wakes the requests that waited for them.
    func finishAllocation(ofGuestClusters first: UInt64, count: Int) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        for cluster in first..<first + UInt64(count) {
            for waiter in inFlight.removeValue(forKey: cluster) ?? [] { waiter.resume() }
        }
    }

    /// Called holding the lock; releases it and returns once the allocation of `guestCluster`
    /// has finished (mapped or failed).
    nonisolated(nonsending) func waitForAllocation(ofGuestCluster guestCluster: UInt64) async {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        await park { (continuation: ParkedContinuation<Void>) in
            // Finishing takes the lock, which the caller held from its check to here.
            precondition(inFlight[guestCluster] != nil, "waiting for guest cluster \(guestCluster), which no request is allocating")
            inFlight[guestCluster]!.append(continuation)
            lock.unlock()
        }
    }

    // MARK: File extension

    /// Extends the file with zeros past `end` in steps of `extensionStep`, so that allocating
    /// writes into never-used clusters land inside the file: on O_DIRECT files a write that
    /// extends the file is serialised by the kernel (io_uring hands it to a worker), and writing
    /// whole clusters of zeros to avoid that costs more than the data. Returns whether the
    /// clusters up to `end` now read as zeros; false when the file cannot zero a range cheaply.
    nonisolated(nonsending) func extendFile(toCover end: UInt64, fileSize: UInt64, io: Qcow2ChildIO) async -> Bool {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        let start = max(fileSize, zeroExtendedTo)
        if end <= start { return true }
        guard canExtend else { return false }
        let target = (end + Self.extensionStep - 1) / Self.extensionStep * Self.extensionStep
        do {
            try await io.writeZeroes(length: Int(target - start), at: start, flags: .noFallback, event: .clusterAllocSpace)
        } catch {
            canExtend = false
            return false
        }
        zeroExtendedTo = target
        return true
    }

    /// The file was cut to `end` (a shrink): space past it is no longer zero-extended, so the next
    /// allocation there extends the file again before anything (an L2 table) is placed in it.
    func fileTruncated(to end: UInt64) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        zeroExtendedTo = min(zeroExtendedTo, end)
    }

    // MARK: Write-back

    /// Makes everything written so far durable: data, then metadata in dependency order.
    nonisolated(nonsending) func flush(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        guard !isFenced else { throw Qcow2Failure(status: .ioError) }
        // Data in an external data file must be durable before any mapping of it is.
        try await io.flushData()
        let flushed = try await refcounts.writeback(io: io)
        let tables = metadata.l2Cache.dirtyTables()
        guard !tables.isEmpty || !dirtyL1.isEmpty else {
            if !flushed { try await io.flush() }
            if !refcounts.pendingFrees.isEmpty { try await refcounts.applyPendingFrees(io: io) }
            return
        }
        // Data written into newly mapped clusters must be on disk before the mappings are.
        if !flushed { try await io.flush() }
        for (offset, table) in tables {
            try checkOverlap(offset: offset, length: clusterSize, kind: .l2Table)
            try await io.write(from: table, length: clusterSize, at: offset, event: .l2Update)
        }
        try await io.flush()
        for (offset, _) in tables { metadata.l2Cache.markClean(tableOffset: offset) }
        if !dirtyL1.isEmpty {
            try await writeL1(io: io)
            try await io.flush()
        }
        try await refcounts.applyPendingFrees(io: io)
    }

    /// Writes the L1 entries that changed, a 4 KiB page of the table at a time.
    private nonisolated(nonsending) func writeL1(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let perPage = 512
        let pages = Set(dirtyL1.map { $0 / perPage }).sorted()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: perPage * 8, alignment: 4096)
        defer { buffer.deallocate() }
        for page in pages {
            let first = page * perPage
            let count = min(perPage, metadata.l1.count - first)
            for index in 0..<count {
                buffer.storeBytes(of: metadata.l1[first + index].bigEndian, toByteOffset: index * 8, as: UInt64.self)
            }
            let offset = metadata.l1TableOffset + UInt64(first * 8)
            try checkOverlap(offset: offset, length: count * 8, kind: .activeL1)
            try await io.write(from: buffer, length: count * 8, at: offset, event: .l1Update)
        }
        dirtyL1 = []
    }

    /// Host clusters an L2 entry holds a reference to (none for unallocated and plain zero).
    /// Clusters of an external data file have no refcounts (QEMU keeps none for them).
    func referencedClusters(of entry: UInt64) -> [UInt64] {
        if metadata.hasDataFile { return [] }
        let bits = UInt64(metadata.clusterBits)
        switch Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits) {
        case .normal(let host): return [host >> bits]
        case .compressed(let host, let bytes):
            let start = host & ~UInt64(511)
            return Array((start >> bits)...((host + UInt64(bytes) - 1) >> bits))
        case .zero:
            let host = entry & Qcow2ClusterMapping.offsetMask
            return host != 0 && host % UInt64(clusterSize) == 0 ? [host >> bits] : []
        case .unallocated, .corrupt: return []
        }
    }
}
