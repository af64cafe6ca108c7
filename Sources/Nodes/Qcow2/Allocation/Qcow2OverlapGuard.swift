import Synchronization

/// What a metadata or data write is about to overwrite, for the overlap checks.
enum Qcow2MetadataKind {
    case header
    case activeL1
    case l2Table
    case refcountTable
    case refcountBlock
    case data
}

/// Where a qcow2 image's metadata lies, so that no write lands on it by mistake (QEMU's
/// qcow2_pre_write_overlap_check): a write that would means the refcounts or the mappings are
/// wrong, and going on would destroy data, so the image is marked corrupt instead.
/// Changed and checked under the node's allocation lock; `isCorrupt` is read by every queue.
final class Qcow2OverlapGuard: @unchecked Sendable {
    // Only touched under the allocation lock, except the atomics `corrupt` and `fenced`.
    private let clusterSize: UInt64
    private var l1Range: Range<UInt64>
    var snapshotRange: Range<UInt64>
    var refcountTableRange: Range<UInt64>
    var l2Tables: Set<UInt64> = []
    var refcountBlocks: Set<UInt64> = []
    private let corrupt = Atomic<Bool>(false)

    var isCorrupt: Bool { corrupt.load(ordering: .relaxed) }

    /// Set when a write switching a structure may or may not have reached the disk (see
    /// `Qcow2Allocator.isFenced`); kept here, beside `corrupt`, as both refuse writes on every queue.
    private let fenced = Atomic<Bool>(false)
    var isFenced: Bool { fenced.load(ordering: .relaxed) }
    func fence() { fenced.store(true, ordering: .relaxed) }

    init(header: Qcow2Header) {
        clusterSize = header.clusterSize
        func clusters(_ offset: UInt64, _ bytes: UInt64) -> Range<UInt64> {
            offset..<offset + (bytes + header.clusterSize - 1) / header.clusterSize * header.clusterSize
        }
        l1Range = clusters(header.l1TableOffset, UInt64(header.l1Size) * 8)
        refcountTableRange = clusters(header.refcountTableOffset, UInt64(header.refcountTableClusters) * header.clusterSize)
        snapshotRange = header.snapshotCount == 0 ? 0..<0 : clusters(header.snapshotsOffset, 1)
    }

    /// The active L1 table moved (a live resize grew it).
    func moveL1(offset: UInt64, entries: Int) {
        l1Range = offset..<offset + (UInt64(entries) * 8 + clusterSize - 1) / clusterSize * clusterSize
    }

    func check(offset: UInt64, length: Int, kind: Qcow2MetadataKind) throws(Qcow2Failure) {
        guard length > 0 else { return }
        let range = offset..<offset + UInt64(length)
        var hit = kind != .header && range.overlaps(0..<clusterSize)
        if kind != .activeL1 { hit = hit || range.overlaps(l1Range) }
        if kind != .refcountTable { hit = hit || range.overlaps(refcountTableRange) }
        hit = hit || range.overlaps(snapshotRange)
        // Bounded: metadata writes are at most a table, data runs at most a request.
        var cluster = offset / clusterSize * clusterSize
        while !hit && cluster < range.upperBound {
            if kind != .refcountBlock && refcountBlocks.contains(cluster) { hit = true }
            if kind != .l2Table && l2Tables.contains(cluster) { hit = true }
            cluster += clusterSize
        }
        if hit {
            corrupt.store(true, ordering: .relaxed)
            throw .corrupt
        }
    }
}
