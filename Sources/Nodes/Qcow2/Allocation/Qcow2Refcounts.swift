import CStrataShim
import StrataGraph
import StrataRuntime

/// A qcow2 image's reference counts and cluster allocation. The refcount table lives wholly in
/// memory (the header check bounds it to 8 MiB); refcount blocks come through a bounded cache.
/// Touched only while holding the node's allocation lock, so it needs no lock of its own.
///
/// Crash ordering: increments may reach the disk at any time (at worst a cluster leaks); a new
/// block is written before the table entry naming it (`writeback` flushes in between); decrements
/// wait in `pendingFrees` until the metadata that stopped referring to the clusters is durable,
/// and only then may the clusters be reused.
final class Qcow2Refcounts {
    let clusterBits: UInt32
    let clusterSize: Int
    /// log2 of the entries per refcount block.
    let blockEntryBits: UInt32
    let cache: Qcow2RefcountBlockCache
    private(set) var table: [UInt64]
    private(set) var tableOffset: UInt64
    private(set) var tableClusters: Int
    private var dirtyTableIndices: Set<Int> = []
    /// Clusters whose references were dropped, counted down after the next metadata flush.
    private(set) var pendingFrees: [UInt64] = []
    /// No free cluster lies below this index.
    private var freeHint: UInt64 = 0
    /// One past the last cluster with a non-zero refcount or in use by the file: every cluster
    /// from here on is free and reads as zeros.
    private(set) var endCluster: UInt64
    /// Clusters found free and about to be counted: no nested allocation may take them.
    private var reserved: [Range<UInt64>] = []
    /// New refcount blocks whose own cluster another block is about to count.
    private var uncountedBlocks: [UInt64] = []
    /// Where compressed clusters are being packed (QEMU's free_byte_offset); 0 when none.
    private var freeByteOffset: UInt64 = 0
    /// Where the metadata lies; refcount blocks and the table are recorded in it.
    private let overlaps: Qcow2OverlapGuard

    /// Offsets must fit in the 56 bits L2 entries hold.
    private var clusterLimit: UInt64 { (UInt64(1) << 56) >> UInt64(clusterBits) }

    init(header: Qcow2Header, table: [UInt64], fileSizeBytes: UInt64, cacheBlocks: Int, overlaps: Qcow2OverlapGuard) throws(Qcow2Failure) {
        self.overlaps = overlaps
        clusterBits = header.clusterBits
        clusterSize = Int(header.clusterSize)
        blockEntryBits = header.clusterBits + 3 - header.refcountOrder
        cache = Qcow2RefcountBlockCache(capacity: cacheBlocks, blockBytes: clusterSize, order: header.refcountOrder)
        self.table = table
        tableOffset = header.refcountTableOffset
        tableClusters = Int(header.refcountTableClusters)
        endCluster = (fileSizeBytes + UInt64(clusterSize) - 1) >> UInt64(clusterBits)
        for offset in table where offset != 0 {
            let block = offset & ~UInt64(511)
            guard block % UInt64(clusterSize) == 0 else { throw .corrupt }
            overlaps.refcountBlocks.insert(block)
            endCluster = max(endCluster, (block >> UInt64(clusterBits)) + 1)
        }
    }

    // MARK: Reading

    /// The refcount of cluster `cluster`.
    nonisolated(nonsending) func refcount(of cluster: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        if cluster >= endCluster { return 0 }
        let blockIndex = Int(cluster >> UInt64(blockEntryBits))
        guard blockIndex < table.count, table[blockIndex] != 0 else { return 0 }
        let slot = try await loadBlock(blockIndex, io: io)
        return cache.get(slot: slot, index: Int(cluster & ((1 << UInt64(blockEntryBits)) - 1)))
    }

    /// The cache slot holding block `blockIndex` (which exists), loading it on a miss.
    private nonisolated(nonsending) func loadBlock(_ blockIndex: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> Int {
        let offset = table[blockIndex]
        if let slot = cache.slot(for: offset) { return slot }
        guard offset % UInt64(clusterSize) == 0, offset >= UInt64(clusterSize) else { throw .corrupt }
        let slot = try await takeSlot(io: io)
        try await io.read(into: cache.memory(of: slot), length: clusterSize, at: offset, event: .refblockLoad)
        cache.assign(slot, to: offset, dirty: false)
        return slot
    }

    /// A cache slot to fill, writing back its dirty block first (increments may reach the disk
    /// early; decrements in it are already safe, see `applyPendingFrees`).
    private nonisolated(nonsending) func takeSlot(io: Qcow2ChildIO) async throws(Qcow2Failure) -> Int {
        let (slot, dirtyOffset) = cache.victim()
        if let dirtyOffset {
            try overlaps.check(offset: dirtyOffset, length: clusterSize, kind: .refcountBlock)
            try await io.write(from: cache.memory(of: slot), length: clusterSize, at: dirtyOffset, event: .refblockUpdatePart)
            cache.markClean(offset: dirtyOffset)
        }
        return slot
    }

    // MARK: Changing

    /// Adds `delta` to the refcount of `cluster`, creating its refcount block (and growing the
    /// table) when needed. A new block that does not cover its own cluster needs that cluster
    /// counted too, which may need another block: a work list, not recursion.
    nonisolated(nonsending) func adjust(_ cluster: UInt64, by delta: Int64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        var work = [(cluster, delta)]
        while let (target, change) = work.popLast() {
            let blockIndex = target >> UInt64(blockEntryBits)
            if blockIndex >= UInt64(table.count) { try await growTable(covering: blockIndex, io: io) }
            if table[Int(blockIndex)] == 0, let blockCluster = try await createBlock(Int(blockIndex), io: io) {
                // Counted after `target`; reserved until then so no allocation takes it.
                work.append((blockCluster, 1))
                uncountedBlocks.append(blockCluster)
            }
            try await adjustCovered(target, by: change, io: io)
            uncountedBlocks.removeAll { $0 == target }
        }
    }

    /// Adds `delta` to the refcount of `cluster`, whose refcount block exists.
    private nonisolated(nonsending) func adjustCovered(_ cluster: UInt64, by delta: Int64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let blockIndex = Int(cluster >> UInt64(blockEntryBits))
        let slot = try await loadBlock(blockIndex, io: io)
        let index = Int(cluster & ((1 << UInt64(blockEntryBits)) - 1))
        let old = cache.get(slot: slot, index: index)
        let new: UInt64
        if delta >= 0 {
            let (sum, overflow) = old.addingReportingOverflow(UInt64(delta))
            guard !overflow, sum <= cache.maxRefcount else { throw Qcow2Failure(status: IOStatus(errno: ERANGE)) }
            new = sum
        } else {
            // Dropping a reference that was never counted: the refcounts are corrupt.
            guard old >= UInt64(-delta) else { throw .corrupt }
            new = old - UInt64(-delta)
        }
        cache.set(slot: slot, index: index, value: new)
        if new == 0 {
            freeHint = min(freeHint, cluster)
            // A freed cluster may be given out whole next: compressed data must not be packed into it any more.
            if cluster == freeByteOffset >> UInt64(clusterBits) { freeByteOffset = 0 }
        } else {
            endCluster = max(endCluster, cluster + 1)
        }
    }

    /// Allocates `count` contiguous clusters with refcount 1; returns the first one's index.
    nonisolated(nonsending) func allocate(_ count: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        precondition(count > 0)
        let hint = freeHint
        let first = try await findFree(count, io: io)
        reserved.append(first..<first + UInt64(count))
        do {
            for index in 0..<UInt64(count) { try await adjust(first + index, by: 1, io: io) }
        } catch {
            reserved.removeLast()
            throw error
        }
        reserved.removeLast()
        if count == 1 || first == hint { freeHint = max(freeHint, first + UInt64(count)) }
        return first
    }

    /// Space for `bytes` (at most a cluster) of compressed data, packed after the previous
    /// compressed cluster when it fits in the same host cluster, as QEMU's qcow2_alloc_bytes.
    nonisolated(nonsending) func allocateBytes(_ bytes: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        precondition(bytes > 0 && bytes <= clusterSize)
        let size = UInt64(clusterSize)
        // The cluster being filled is shared once more, unless its count is at the refcount width's
        // maximum (QEMU's qcow2_alloc_bytes): then a new cluster starts.
        if freeByteOffset != 0, freeByteOffset % size != 0, freeByteOffset % size + UInt64(bytes) <= size,
           try await refcount(of: freeByteOffset >> UInt64(clusterBits), io: io) < cache.maxRefcount {
            let offset = freeByteOffset
            try await adjust(offset >> UInt64(clusterBits), by: 1, io: io)
            freeByteOffset = offset + UInt64(bytes)
            return offset
        }
        let offset = try await allocate(1, io: io) << UInt64(clusterBits)
        freeByteOffset = offset + UInt64(bytes)
        return offset
    }

    /// The first run of `count` free clusters at or after the hint.
    private nonisolated(nonsending) func findFree(_ count: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64 {
        var candidate = freeHint
        var run: UInt64 = 0
        while run < UInt64(count) {
            let cluster = candidate + run
            guard cluster < clusterLimit else { throw Qcow2Failure(status: .noSpace) }
            // Clusters at the header (0) are never free, whatever a corrupt refcount says.
            var taken = cluster == 0 || reserved.contains { $0.contains(cluster) } || uncountedBlocks.contains(cluster)
            if !taken && cluster < endCluster { taken = try await refcount(of: cluster, io: io) != 0 }
            if taken {
                candidate = cluster + 1
                run = 0
            } else {
                run += 1
            }
        }
        return candidate
    }

    /// A new, empty refcount block for `blockIndex`, placed in a free cluster. Counts itself when
    /// it covers its own cluster; otherwise returns that cluster for the caller to count.
    private nonisolated(nonsending) func createBlock(_ blockIndex: Int, io: Qcow2ChildIO) async throws(Qcow2Failure) -> UInt64? {
        let cluster = try await findFree(1, io: io)
        let offset = cluster << UInt64(clusterBits)
        try overlaps.check(offset: offset, length: clusterSize, kind: .refcountBlock)
        let slot = try await takeSlot(io: io)
        cache.memory(of: slot).initializeMemory(as: UInt8.self, repeating: 0, count: clusterSize)
        cache.assign(slot, to: offset, dirty: true)
        table[blockIndex] = offset
        dirtyTableIndices.insert(blockIndex)
        overlaps.refcountBlocks.insert(offset)
        endCluster = max(endCluster, cluster + 1)
        guard cluster >> UInt64(blockEntryBits) == UInt64(blockIndex) else { return cluster }
        cache.set(slot: slot, index: Int(cluster & ((1 << UInt64(blockEntryBits)) - 1)), value: 1)
        return nil
    }

    /// Replaces the refcount table with a larger one at the end of the image, with new blocks
    /// for its own clusters where needed. The old table stays valid until the header names the
    /// new one, so a crash at any point leaves the old or the new table, and at worst leaks.
    private nonisolated(nonsending) func growTable(covering blockIndex: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        try await writeback(io: io)
        let entriesPerCluster = clusterSize / 8
        var entries = max(Int(blockIndex) + 1, table.count + table.count / 2 + 1)
        entries = (entries + entriesPerCluster - 1) / entriesPerCluster * entriesPerCluster
        guard UInt64(entries) * 8 <= Qcow2Header.maxRefcountTableBytes else { throw Qcow2Failure(status: .noSpace) }
        let newTableClusters = entries / entriesPerCluster
        let start = max(endCluster, reserved.map(\.upperBound).max() ?? 0, (uncountedBlocks.max() ?? 0) + 1)
        // Blocks for the new clusters that no existing block covers; they need covering too.
        var uncovered: [UInt64] = []
        while true {
            let end = start + UInt64(newTableClusters + uncovered.count)
            let blocks = Array((start >> UInt64(blockEntryBits))...((end - 1) >> UInt64(blockEntryBits)))
                .filter { $0 >= UInt64(table.count) || table[Int($0)] == 0 }
            if blocks.count == uncovered.count { break }
            uncovered = blocks
        }
        let end = start + UInt64(newTableClusters + uncovered.count)
        guard end < clusterLimit else { throw Qcow2Failure(status: .noSpace) }
        var newTable = table + Array(repeating: 0, count: entries - table.count)
        for (position, index) in uncovered.enumerated() {
            newTable[Int(index)] = (start + UInt64(newTableClusters + position)) << UInt64(clusterBits)
        }
        // Fill the new blocks in memory; count clusters under existing blocks through the cache.
        let blockMemory = UnsafeMutableRawPointer.allocate(byteCount: max(1, uncovered.count) * clusterSize, alignment: 4096)
        defer { blockMemory.deallocate() }
        blockMemory.initializeMemory(as: UInt8.self, repeating: 0, count: max(1, uncovered.count) * clusterSize)
        for cluster in start..<end {
            let index = cluster >> UInt64(blockEntryBits)
            if let position = uncovered.firstIndex(of: index) {
                let entry = Int(cluster & ((1 << UInt64(blockEntryBits)) - 1))
                cache.codec.set(block: UnsafeMutableRawBufferPointer(start: blockMemory + position * clusterSize, count: clusterSize),
                                index: entry, value: 1)
            } else {
                try await adjustCovered(cluster, by: 1, io: io)
            }
        }
        let newTableOffset = start << UInt64(clusterBits)
        for position in uncovered.indices {
            let offset = newTable[Int(uncovered[position])]
            try overlaps.check(offset: offset, length: clusterSize, kind: .refcountBlock)
            try await io.write(from: blockMemory + position * clusterSize, length: clusterSize, at: offset, event: .refblockAllocWriteBlocks)
        }
        var tableBytes = [UInt8](repeating: 0, count: entries * 8)
        tableBytes.withUnsafeMutableBytes { raw in
            for (index, value) in newTable.enumerated() { raw.storeBytes(of: value.bigEndian, toByteOffset: index * 8, as: UInt64.self) }
        }
        try overlaps.check(offset: newTableOffset, length: entries * 8, kind: .refcountTable)
        try await io.write(bytes: tableBytes, at: newTableOffset, event: .refblockAllocWriteTable)
        try await writeDirtyBlocks(io: io)
        try await io.flush()
        do {
            try await writeTableLocation(newTableOffset, clusters: UInt32(newTableClusters), io: io)
            overlaps.refcountTableRange = newTableOffset..<newTableOffset + UInt64(newTableClusters * clusterSize)
            try await io.flush()
        } catch {
            // The header may name the new table or the old one: write nothing more.
            overlaps.fence()
            throw error
        }
        let oldFirst = tableOffset >> UInt64(clusterBits)
        for cluster in oldFirst..<oldFirst + UInt64(tableClusters) { pendingFrees.append(cluster) }
        table = newTable
        tableOffset = newTableOffset
        tableClusters = newTableClusters
        for index in uncovered { overlaps.refcountBlocks.insert(newTable[Int(index)]) }
        endCluster = max(endCluster, end)
    }

    /// Points the header at a new refcount table: offset and cluster count are adjacent header
    /// fields (bytes 48-59), written in one request.
    private nonisolated(nonsending) func writeTableLocation(_ offset: UInt64, clusters: UInt32, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: 12, alignment: 8)
        defer { bytes.deallocate() }
        bytes.storeBytes(of: offset.bigEndian, toByteOffset: 0, as: UInt64.self)
        bytes.storeBytes(of: clusters.bigEndian, toByteOffset: 8, as: UInt32.self)
        try await io.write(from: bytes, length: 12, at: 48, event: .refblockAllocSwitchTable)
    }

    /// Drops one reference to each host cluster in `clusters` once the metadata flush that makes
    /// the change durable has completed.
    func releaseAfterFlush(_ clusters: some Sequence<UInt64>) {
        pendingFrees.append(contentsOf: clusters)
    }

    /// Counts down the pending frees; the mappings that dropped them are durable now.
    nonisolated(nonsending) func applyPendingFrees(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let frees = pendingFrees
        pendingFrees = []
        for cluster in frees { try await adjust(cluster, by: -1, io: io) }
    }

    // MARK: Writing back

    var isDirty: Bool { !dirtyTableIndices.isEmpty || !cache.dirtyBlocks().isEmpty }

    private nonisolated(nonsending) func writeDirtyBlocks(io: Qcow2ChildIO) async throws(Qcow2Failure) {
        for (offset, memory) in cache.dirtyBlocks() {
            try overlaps.check(offset: offset, length: clusterSize, kind: .refcountBlock)
            try await io.write(from: memory, length: clusterSize, at: offset, event: .refblockUpdatePart)
            cache.markClean(offset: offset)
        }
    }

    /// Writes dirty blocks, flushes, then the table entries naming new blocks, and flushes again.
    /// Returns whether anything was written (and so flushed).
    @discardableResult
    nonisolated(nonsending) func writeback(io: Qcow2ChildIO) async throws(Qcow2Failure) -> Bool {
        let blocks = cache.dirtyBlocks()
        guard !blocks.isEmpty || !dirtyTableIndices.isEmpty else { return false }
        try await writeDirtyBlocks(io: io)
        try await io.flush()
        guard !dirtyTableIndices.isEmpty else { return true }
        let entriesPerCluster = clusterSize / 8
        let chunks = Set(dirtyTableIndices.map { $0 / entriesPerCluster }).sorted()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: clusterSize, alignment: 4096)
        defer { buffer.deallocate() }
        for chunk in chunks {
            for slot in 0..<entriesPerCluster {
                buffer.storeBytes(of: table[chunk * entriesPerCluster + slot].bigEndian, toByteOffset: slot * 8, as: UInt64.self)
            }
            let offset = tableOffset + UInt64(chunk * clusterSize)
            try overlaps.check(offset: offset, length: clusterSize, kind: .refcountTable)
            try await io.write(from: buffer, length: clusterSize, at: offset, event: .reftableUpdate)
        }
        try await io.flush()
        dirtyTableIndices = []
        return true
    }
}
