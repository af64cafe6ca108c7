import StrataNodes

/// An image's reference counts as the offline amend reads and changes them: lookups, and
/// allocations planned in memory (first fit from the start of the file, as QEMU's allocator)
/// that `commit` makes durable in crash-safe order: refcount blocks, flush, then the refcount
/// table entries naming new blocks, flush. A caller writes what points at the new clusters only
/// after `commit`, so a crash at any point leaves at worst leaked clusters.
final class Qcow2OfflineRefcounts {
    let io: any Qcow2ImageIO
    let codec: Qcow2RefcountCodec
    let clusterSize: Int
    let clusterBits: UInt32
    /// log2 of the entries per refcount block.
    let blockBits: Int
    let tableOffset: UInt64
    private(set) var table: [UInt64]
    private var blocks: [UInt64: [UInt8]] = [:]
    private var dirtyBlocks: Set<UInt64> = []
    private var newTableEntries: [Int] = []
    /// No cluster below this one is free (cluster 0 holds the header).
    private var firstCandidate: UInt64 = 1
    /// Clean blocks are dropped from memory past this many, so memory stays bounded.
    static let cachedBlockLimit = 4096

    /// Offsets must fit in the 56 bits L2 entries hold.
    private var clusterLimit: UInt64 { (UInt64(1) << 56) >> UInt64(clusterBits) }

    init(io: any Qcow2ImageIO, image: Qcow2OfflineImage) async throws {
        self.io = io
        codec = Qcow2RefcountCodec(order: image.header.refcountOrder)
        clusterSize = Int(image.clusterSize)
        clusterBits = image.clusterBits
        blockBits = codec.entriesPerBlock(clusterSize: clusterSize).trailingZeroBitCount
        tableOffset = image.header.refcountTableOffset
        let bytes = try await io.read(offset: tableOffset, count: Int(image.header.refcountTableClusters) * clusterSize)
        table = (0..<(bytes.count / 8)).map { bytes.loadBE64(at: $0 * 8) }
    }

    /// The stored refcount of `cluster` (0 where no block covers it).
    func refcount(_ cluster: UInt64) async throws -> UInt64 {
        let index = Int(clamping: cluster >> UInt64(blockBits))
        guard index < table.count else { return 0 }
        guard let blockOffset = try blockOffset(index) else { return 0 }
        return codec.get(block: try await block(blockOffset), index: entry(cluster))
    }

    /// Takes the first free cluster and gives it refcount `value`; returns its byte offset. A
    /// missing refcount block is created in the first free cluster of the range it covers (so
    /// it counts itself, as QEMU places it). Nothing is written before `commit`.
    func allocate(refcount value: UInt64) async throws -> UInt64 {
        precondition(value > 0 && value <= codec.maxRefcount)
        var cluster = firstCandidate
        while true {
            guard cluster < clusterLimit else { throw Qcow2ImageError("No space left for a new cluster (offsets past 2^56)") }
            let index = Int(cluster >> UInt64(blockBits))
            guard index < table.count else {
                throw Qcow2ImageError("The refcount table is full (\(table.count) blocks); growing it is not supported by amend")
            }
            guard let blockOffset = try blockOffset(index) else {
                let offset = cluster << UInt64(clusterBits)
                var fresh = [UInt8](repeating: 0, count: clusterSize)
                codec.set(block: &fresh, index: entry(cluster), value: 1)
                blocks[offset] = fresh
                dirtyBlocks.insert(offset)
                table[index] = offset
                newTableEntries.append(index)
                cluster += 1
                continue
            }
            var bytes = try await block(blockOffset)
            if codec.get(block: bytes, index: entry(cluster)) == 0 {
                codec.set(block: &bytes, index: entry(cluster), value: value)
                blocks[blockOffset] = bytes
                dirtyBlocks.insert(blockOffset)
                firstCandidate = cluster + 1
                return cluster << UInt64(clusterBits)
            }
            cluster += 1
        }
    }

    /// Drops `count` references to `cluster`; the caller commits only once whatever stopped
    /// referring to it is durable, so a crash between the two only leaks.
    func release(_ cluster: UInt64, by count: UInt64) async throws {
        let index = Int(clamping: cluster >> UInt64(blockBits))
        guard index < table.count, let blockOffset = try blockOffset(index) else {
            throw Qcow2ImageError("Cluster 0x\(String(cluster, radix: 16)) to release has no refcount block")
        }
        var bytes = try await block(blockOffset)
        let value = codec.get(block: bytes, index: entry(cluster))
        guard value >= count else {
            throw Qcow2ImageError("Cluster 0x\(String(cluster, radix: 16)) has refcount \(value), cannot drop \(count) references")
        }
        codec.set(block: &bytes, index: entry(cluster), value: value - count)
        blocks[blockOffset] = bytes
        dirtyBlocks.insert(blockOffset)
        if value == count { firstCandidate = min(firstCandidate, max(1, cluster)) }
    }

    /// Makes the planned allocations durable: blocks first (an increment alone only leaks),
    /// then the table entries that name new blocks.
    func commit() async throws {
        guard !dirtyBlocks.isEmpty || !newTableEntries.isEmpty else { return }
        for offset in dirtyBlocks.sorted() { try await io.write(offset: offset, bytes: blocks[offset]!) }
        try await io.flush()
        for index in newTableEntries {
            var entry = [UInt8](repeating: 0, count: 8)
            entry.storeBE64(table[index], at: 0)
            try await io.write(offset: tableOffset + UInt64(index) * 8, bytes: entry)
        }
        if !newTableEntries.isEmpty { try await io.flush() }
        dirtyBlocks = []
        newTableEntries = []
    }

    private func entry(_ cluster: UInt64) -> Int { Int(cluster & ((1 << UInt64(blockBits)) - 1)) }

    /// The block named by table entry `index`; nil when there is none. A misaligned entry is
    /// corruption: nothing is allocated through it.
    private func blockOffset(_ index: Int) throws -> UInt64? {
        let offset = table[index] & Qcow2Checker.reftableOffsetMask
        guard offset != 0 else { return nil }
        guard offset % UInt64(clusterSize) == 0 else {
            throw Qcow2ImageError("Refcount block \(index) at 0x\(String(offset, radix: 16)) is not cluster aligned; run 'strata img check -r all'")
        }
        return offset
    }

    private func block(_ offset: UInt64) async throws -> [UInt8] {
        if let cached = blocks[offset] { return cached }
        if blocks.count >= Self.cachedBlockLimit { blocks = blocks.filter { dirtyBlocks.contains($0.key) } }
        let bytes = try await io.read(offset: offset, count: clusterSize)
        blocks[offset] = bytes
        return bytes
    }
}
