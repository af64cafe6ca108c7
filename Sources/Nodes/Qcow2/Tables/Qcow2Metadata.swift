import StrataGraph
import Synchronization

/// A qcow2 node's mapping metadata, shared by its instances on every queue: the validated header,
/// the active L1 table and the L2 cache. Writers change them through the node's `Qcow2Allocator`.
final class Qcow2Metadata: Sendable {
    /// QEMU's default on Linux (DEFAULT_L2_CACHE_MAX_SIZE): enough for the whole image up to
    /// 32 MiB, which covers 256 GiB with 64 KiB clusters. Like QEMU's, the cache's memory is
    /// allocated at open, and never for more tables than the image has.
    static let defaultL2CacheBytes = 32 << 20
    /// The largest L2 cache an option may ask for: QEMU bounds it only by memory; Strata refuses
    /// more than this rather than try an allocation a typo asked for.
    static let maxL2CacheBytes = 1 << 30

    /// QEMU's MIN_REFCOUNT_CACHE_SIZE, also its default: 4 clusters of refcount blocks.
    static let minRefcountCacheBlocks = 4

    /// The header as opened; what a live resize changes is in `sizeBytes` and `l1TableOffset`.
    let header: Qcow2Header
    private let sizeStorage: Atomic<UInt64>
    private let l1OffsetStorage: Atomic<UInt64>
    private let l1DiskEntriesStorage: Atomic<Int>
    /// The virtual size now: block_resize changes it while queues run.
    var sizeBytes: UInt64 { sizeStorage.load(ordering: .acquiring) }
    /// Where the active L1 table is now (a grow may move it); changed under the allocation lock.
    var l1TableOffset: UInt64 { l1OffsetStorage.load(ordering: .acquiring) }
    /// Entries the L1 table on disk has room for (`l1_size`), which may exceed what the size needs.
    var l1DiskEntries: Int { l1DiskEntriesStorage.load(ordering: .acquiring) }
    let clusterBits: UInt32
    let clusterSize: Int
    let l2Entries: Int
    /// log2 of `l2Entries`.
    private let l2Bits: UInt64
    /// Extended L2 entries: two 64-bit words an entry (the entry, then its subcluster bitmap).
    let extendedL2: Bool
    /// 64-bit words per L2 entry: 1, or 2 with extended L2 entries.
    let l2EntryWords: Int
    /// log2 of the subcluster size (clusters have 32 subclusters with extended L2 entries).
    let subclusterBits: UInt32
    let subclusterSize: Int
    /// Data clusters live in the `data-file` child: no refcounts, host offset == guest offset.
    let hasDataFile: Bool
    /// L1 entries in host byte order, only as many as the virtual size needs.
    let l1: Qcow2L1Table
    /// A guest write, write-zeroes or discard reached the node since it was opened: persistent
    /// bitmaps of a node no graph controller tracks (a test harness, a tool opening the node
    /// by hand) are stored in use then, since nothing marked them.
    let guestChanged = Atomic<Bool>(false)
    let l2Cache: Qcow2L2Cache

    /// Loads the L1 table through `reader`; `l2CacheBytes` bounds the L2 cache (at least two
    /// tables, as QEMU, and never more than the image has). A `growable` table has room for the
    /// largest size qcow2 allows.
    init(header: Qcow2Header, reader: Qcow2OpenReader, l2CacheBytes: Int, growable: Bool) async throws(GraphError) {
        self.header = header
        sizeStorage = Atomic(header.sizeBytes)
        l1OffsetStorage = Atomic(header.l1TableOffset)
        l1DiskEntriesStorage = Atomic(Int(header.l1Size))
        clusterBits = header.clusterBits
        clusterSize = Int(header.clusterSize)
        extendedL2 = header.hasExtendedL2
        l2EntryWords = extendedL2 ? 2 : 1
        l2Entries = clusterSize / (8 * l2EntryWords)
        l2Bits = UInt64(header.l2Bits)
        subclusterBits = extendedL2 ? clusterBits - 5 : clusterBits
        subclusterSize = 1 << Int(subclusterBits)
        hasDataFile = header.hasDataFile
        // Bounded: the header checked l1_size against 32 MiB, and the size needs no more than l1_size.
        let needed = Int(header.l1EntriesNeeded)
        let bytes = try await reader.read(offset: header.l1TableOffset, count: needed * 8, what: "L1 table")
        var l1 = [UInt64](repeating: 0, count: needed)
        bytes.withUnsafeBytes { raw in
            for index in 0..<needed { l1[index] = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
        }
        self.l1 = Qcow2L1Table(l1, capacity: growable ? Int(Qcow2Header.maxL1Bytes / 8) : nil)
        let tables = max(2, l2CacheBytes / clusterSize)
        l2Cache = Qcow2L2Cache(capacity: max(1, min(tables, needed)), tableBytes: clusterSize)
    }

    /// The L1 index, L2 index and offset inside the cluster of a guest offset.
    func locate(_ guestOffset: UInt64) -> (l1Index: Int, l2Index: Int, inCluster: Int) {
        let cluster = guestOffset >> UInt64(clusterBits)
        assert(Int(cluster >> l2Bits) < l1.count, "the L1 table covers the virtual size")
        return (Int(cluster >> l2Bits), Int(cluster & UInt64(l2Entries - 1)),
                Int(guestOffset & UInt64(clusterSize - 1)))
    }

    /// Publishes a new virtual size (the resize has made it durable, or is about to shrink).
    func setSize(_ newSize: UInt64) { sizeStorage.store(newSize, ordering: .releasing) }

    /// Publishes the L1 table's new place on disk (allocation lock held).
    func setL1Table(offset: UInt64, diskEntries: Int) {
        l1OffsetStorage.store(offset, ordering: .releasing)
        l1DiskEntriesStorage.store(diskEntries, ordering: .releasing)
    }
}
