/// Checks a qcow2 image's reference counts the way `qemu-img check` does (QEMU's
/// qcow2_check_refcounts): computes how often every host cluster is referenced by the header,
/// the L1/L2 tables of the active image and of every snapshot, data and compressed clusters,
/// the refcount table and blocks, the snapshot table and the bitmaps; compares that with the
/// stored refcounts; checks the COPIED flags; and optionally repairs. Memory is bounded by the
/// file's size (see `maxClusters`), and so is the work: a hostile image gets an error, never a
/// crash, a hang or an unbounded allocation.
public final class Qcow2Checker {
    /// The most host clusters (from the file size) a check tracks; QEMU's bound is INT_MAX.
    public static let maxClusters = 1 << 28
    /// How far past the end of the file references are still counted, in clusters.
    static let maxClustersPastEnd = 1 << 20
    /// L2 tables read per check, at most this many times the file's clusters (plus a floor), so
    /// snapshots sharing tables are fine but a hostile loop of references is cut short.
    static let l2ReadsPerCluster = 64
    static let minL2Reads = 1 << 20

    public static let l1OffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l1ReservedMask: UInt64 = 0x7f00_0000_0000_01ff
    static let l2StandardReservedMask: UInt64 = 0x3f00_0000_0000_01fe
    public static let reftableOffsetMask: UInt64 = 0xffff_ffff_ffff_fe00
    static let reftableReservedMask: UInt64 = 0x1ff
    static let subclustersAllocatedMask: UInt64 = 0xffff_ffff

    let io: any Qcow2ImageIO
    let name: String
    private(set) var image: Qcow2OfflineImage
    let codec: Qcow2RefcountCodec
    let clusterSize: Int
    let clusterBits: UInt32
    /// log2 of the entries per refcount block.
    let refblockBits: Int
    /// The stored refcount table, in host byte order, and where it lies.
    var reftable: [UInt64]
    var reftableOffset: UInt64
    var refcounts: Qcow2RefcountArray
    var report: Qcow2CheckReport
    var l2ReadsLeft: Int
    /// One refcount block read through (and written back from) a one-entry cache.
    var cachedBlock: (offset: UInt64, bytes: [UInt8], dirty: Bool)?

    /// Checks the image behind `io` and, with `repair`, fixes what the mode allows and checks
    /// again (the report then has the second check's counts and the fixed counts). Throws when
    /// the image cannot be opened at all (bad header) or an I/O error stops the check.
    public static func check(io: any Qcow2ImageIO, filename: String, repair: Qcow2RepairMode?) async throws -> Qcow2CheckReport {
        var first = try await Qcow2Checker(io: io, name: filename).run(repair: repair)
        guard repair != nil, first.failure == nil, first.corruptionsFixed > 0 || first.leaksFixed > 0 else { return first }
        var second = try await Qcow2Checker(io: io, name: filename).run(repair: nil)
        second.corruptionsFixed = first.corruptionsFixed
        second.leaksFixed = first.leaksFixed
        second.repaired = true
        second.messages = first.messages + second.messages
        first = second
        return first
    }

    init(io: any Qcow2ImageIO, name: String) async throws {
        self.io = io
        self.name = name
        image = try await Qcow2OfflineImage.load(io: io, name: name)
        codec = Qcow2RefcountCodec(order: image.header.refcountOrder)
        clusterSize = Int(image.clusterSize)
        clusterBits = image.clusterBits
        refblockBits = codec.entriesPerBlock(clusterSize: clusterSize).trailingZeroBitCount
        let fileClusters = (image.fileSize + image.clusterSize - 1) >> UInt64(clusterBits)
        guard fileClusters <= UInt64(Self.maxClusters) else {
            throw Qcow2ImageError("'\(name)': the image file is too large to check (\(fileClusters) clusters, at most \(Self.maxClusters))")
        }
        refcounts = Qcow2RefcountArray(codec: codec, clusterSize: clusterSize, clusters: Int(fileClusters),
                                       limitClusters: Int(fileClusters) + Self.maxClustersPastEnd)
        report = Qcow2CheckReport(filename: name)
        l2ReadsLeft = max(Self.minL2Reads, Int(fileClusters) * Self.l2ReadsPerCluster)
        reftable = []
        reftableOffset = image.header.refcountTableOffset
        reftable = try await loadReftable(offset: image.header.refcountTableOffset, clusters: Int(image.header.refcountTableClusters))
    }

    func loadReftable(offset: UInt64, clusters: Int) async throws -> [UInt64] {
        let bytes = try await io.read(offset: offset, count: clusters * clusterSize)
        return (0..<(bytes.count / 8)).map { bytes.loadBE64(at: $0 * 8) }
    }

    func note(_ line: String) { report.messages.append(line) }

    // MARK: - The check (qcow2_co_check_locked)

    func run(repair: Qcow2RepairMode?) async throws -> Qcow2CheckReport {
        let fixLeaks = repair != nil
        let fixErrors = repair == .all
        report.totalClusters = (image.virtualSize + image.clusterSize - 1) >> UInt64(clusterBits)

        var rebuild = false
        try await calculateRefcounts(rebuild: &rebuild, countFragments: true)
        let beforeCompare = report
        var highest = 0
        try await compareRefcounts(fixLeaks: false, fixErrors: false, rebuild: &rebuild, highest: &highest)

        if rebuild, fixErrors {
            note("Rebuilding refcount structure")
            let old = report
            try await rebuildRefcountStructure()
            report.corruptions = 0
            report.leaks = 0
            rebuild = false
            refcounts.reset()
            let countsBefore = (report.allocatedClusters, report.fragmentedClusters, report.compressedClusters)
            try await calculateRefcounts(rebuild: &rebuild, countFragments: false)
            (report.allocatedClusters, report.fragmentedClusters, report.compressedClusters) = countsBefore
            // The old structures are leaked now: free them; leaks left are the rebuild's own.
            let saved = report
            report.corruptions = 0
            report.leaks = 0
            try await compareRefcounts(fixLeaks: true, fixErrors: false, rebuild: &rebuild, highest: &highest)
            if rebuild { note("ERROR rebuilt refcount structure is still broken") }
            let freshLeaks = report.leaks
            let messages = report.messages
            report = saved
            report.messages = messages
            if report.corruptions < old.corruptions { report.corruptionsFixed += old.corruptions - report.corruptions }
            if report.leaks < old.leaks { report.leaksFixed += old.leaks - report.leaks }
            report.leaks += freshLeaks
        } else if fixLeaks {
            if rebuild {
                note("ERROR need to rebuild refcount structures")
                report.checkErrors += 1
                report.failure = "need to rebuild refcount structures (use -r all)"
                return report
            }
            if report.leaks > 0 || report.corruptions > 0 {
                let messages = report.messages
                report = beforeCompare
                report.messages = messages
                try await compareRefcounts(fixLeaks: fixLeaks, fixErrors: fixErrors, rebuild: &rebuild, highest: &highest)
            }
        }
        try await writeBackBlock()
        if report.leaksFixed > 0 || report.corruptionsFixed > 0 { try await io.flush() }

        try await checkCopiedFlags(fixLeaks: fixLeaks, fixErrors: fixErrors)
        report.imageEndOffset = UInt64(highest + 1) * UInt64(clusterSize)

        if fixLeaks, report.checkErrors == 0, report.corruptions == 0 {
            try await markCleanAndConsistent()
        }
        return report
    }

    /// Clears the dirty and corrupt bits once the refcounts are known good (they are flushed first).
    func markCleanAndConsistent() async throws {
        let bits = Qcow2Header.dirtyBit | Qcow2Header.corruptBit
        guard image.version >= 3, image.header.incompatibleFeatures & bits != 0 else { return }
        try await io.flush()
        var field = [UInt8](repeating: 0, count: 8)
        field.storeBE64(image.header.incompatibleFeatures & ~bits, at: 0)
        try await io.write(offset: 72, bytes: field)
        try await io.flush()
    }

    func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}

extension Qcow2ImageIO {
    func flushIfWritten(_ written: Bool) async throws {
        if written { try await flush() }
    }
}
