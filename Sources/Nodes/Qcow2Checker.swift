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

    static let l1OffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l1ReservedMask: UInt64 = 0x7f00_0000_0000_01ff
    static let l2StandardReservedMask: UInt64 = 0x3f00_0000_0000_01fe
    static let reftableOffsetMask: UInt64 = 0xffff_ffff_ffff_fe00
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
    private var l2ReadsLeft: Int
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

    private func loadReftable(offset: UInt64, clusters: Int) async throws -> [UInt64] {
        let bytes = try await io.read(offset: offset, count: clusters * clusterSize)
        return (0..<(bytes.count / 8)).map { bytes.loadBE64(at: $0 * 8) }
    }

    private func note(_ line: String) { report.messages.append(line) }

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
    private func markCleanAndConsistent() async throws {
        let bits = Qcow2Header.dirtyBit | Qcow2Header.corruptBit
        guard image.version >= 3, image.header.incompatibleFeatures & bits != 0 else { return }
        try await io.flush()
        var field = [UInt8](repeating: 0, count: 8)
        field.storeBE64(image.header.incompatibleFeatures & ~bits, at: 0)
        try await io.write(offset: 72, bytes: field)
        try await io.flush()
    }

    // MARK: - Computing the references (calculate_refcounts)

    private func calculateRefcounts(rebuild: inout Bool, countFragments: Bool) async throws {
        increment(offset: 0, bytes: UInt64(clusterSize))
        try await checkL1(offset: image.header.l1TableOffset, entries: Int(image.header.l1Size), active: true, countFragments: countFragments)
        if image.hasDataFile, !image.snapshots.isEmpty {
            note("ERROR \(image.snapshots.count) snapshots in image with data file")
            report.corruptions += 1
        }
        for snapshot in image.snapshots {
            if snapshot.l1TableOffset % UInt64(clusterSize) != 0 {
                note("ERROR snapshot \(snapshot.id) (\(snapshot.name)) l1_offset=0x\(hex(snapshot.l1TableOffset)): L1 table is not cluster aligned; snapshot table entry corrupted")
                report.corruptions += 1
                continue
            }
            if UInt64(snapshot.l1Size) * 8 > Qcow2Header.maxL1Bytes {
                note("ERROR snapshot \(snapshot.id) (\(snapshot.name)) l1_size=0x\(hex(UInt64(snapshot.l1Size))): L1 table is too large; snapshot table entry corrupted")
                report.corruptions += 1
                continue
            }
            try await checkL1(offset: snapshot.l1TableOffset, entries: Int(snapshot.l1Size), active: false, countFragments: false)
        }
        increment(offset: image.header.snapshotsOffset, bytes: image.snapshotsBytes)
        increment(offset: reftableOffset, bytes: UInt64(reftable.count * 8))
        try await countBitmaps()
        try await checkRefcountBlocks(rebuild: &rebuild)
    }

    /// Counts one reference to every cluster overlapping [offset, offset+bytes)
    /// (qcow2_inc_refcounts_imrt): an entry at its maximum is an overflow corruption.
    private func increment(offset: UInt64, bytes: UInt64) {
        guard bytes > 0 else { return }
        let (end, overflow) = offset.addingReportingOverflow(bytes - 1)
        guard !overflow else {
            note("ERROR: reference to 0x\(hex(offset)) with \(bytes) bytes overflows")
            report.corruptions += 1
            return
        }
        let first = offset >> UInt64(clusterBits)
        let last = end >> UInt64(clusterBits)
        var cluster = first
        while cluster <= last {
            if cluster >= UInt64(refcounts.count) {
                guard cluster < UInt64(refcounts.limitClusters), refcounts.grow(to: Int(cluster) + 1) else {
                    note("ERROR: cluster offset=0x\(hex(cluster << UInt64(clusterBits))) lies far past the end of the image; not counted")
                    report.corruptions += 1
                    return
                }
            }
            let index = Int(cluster)
            let value = refcounts[index]
            if value == codec.maxRefcount {
                note("ERROR: overflow cluster offset=0x\(hex(cluster << UInt64(clusterBits)))")
                note("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing")
                report.corruptions += 1
            } else {
                refcounts[index] = value + 1
            }
            cluster += 1
        }
    }

    private func checkL1(offset: UInt64, entries: Int, active: Bool, countFragments: Bool) async throws {
        increment(offset: offset, bytes: UInt64(entries) * 8)
        guard entries > 0 else { return }
        let table = try await io.read(offset: offset, count: entries * 8)
        for index in 0..<entries {
            let entry = table.loadBE64(at: index * 8)
            guard entry != 0 else { continue }
            if entry & Self.l1ReservedMask != 0 {
                note("ERROR found L1 entry with reserved bits set: \(hex(entry))")
                report.corruptions += 1
            }
            let l2Offset = entry & Self.l1OffsetMask
            increment(offset: l2Offset, bytes: UInt64(clusterSize))
            if l2Offset % UInt64(clusterSize) != 0 {
                note("ERROR l2_offset=\(hex(l2Offset)): Table is not cluster aligned; L1 entry corrupted")
                report.corruptions += 1
            }
            try await checkL2(offset: l2Offset, countFragments: countFragments)
        }
    }

    private func checkL2(offset: UInt64, countFragments: Bool) async throws {
        guard l2ReadsLeft > 0 else {
            throw Qcow2ImageError("'\(name)': too many L2 table references to check (the image's snapshots or L1 tables are not plausible)")
        }
        l2ReadsLeft -= 1
        let table = try await io.read(offset: offset, count: clusterSize)
        let entryBytes = image.l2EntryBytes
        let extended = image.extendedL2
        var nextContiguous: UInt64 = 0
        for index in 0..<image.l2Entries {
            let entry = table.loadBE64(at: index * entryBytes)
            let bitmap = extended ? table.loadBE64(at: index * entryBytes + 8) : 0
            switch clusterType(entry) {
            case .compressed:
                if entry & Qcow2ClusterMapping.copiedFlag != 0 {
                    note("ERROR: coffset=0x\(hex(entry & compressedOffsetMask)): copied flag must never be set for compressed clusters")
                    report.corruptions += 1
                }
                if image.hasDataFile {
                    note("ERROR compressed cluster \(index) with data file, entry=0x\(hex(entry))")
                    report.corruptions += 1
                    continue
                }
                if bitmap != 0 {
                    note("ERROR compressed cluster \(index) with non-zero subcluster allocation bitmap, entry=0x\(hex(entry))")
                    report.corruptions += 1
                    continue
                }
                if case .compressed(let host, let bytes) = Qcow2ClusterMapping(l2Entry: entry & ~Qcow2ClusterMapping.copiedFlag, clusterBits: clusterBits) {
                    increment(offset: host, bytes: UInt64(bytes))
                }
                if countFragments {
                    report.allocatedClusters += 1
                    report.compressedClusters += 1
                    // Compressed clusters share sectors, so QEMU counts them as fragmented.
                    report.fragmentedClusters += 1
                }
            case .normal, .zeroAllocated:
                let host = entry & Qcow2ClusterMapping.offsetMask
                if entry & Self.l2StandardReservedMask != 0 {
                    note("ERROR found l2 entry with reserved bits set: \(hex(entry))")
                    report.corruptions += 1
                }
                if (bitmap >> 32) & bitmap != 0 {
                    note("ERROR offset=\(hex(host)): Allocated cluster has corrupted subcluster allocation bitmap")
                    report.corruptions += 1
                }
                if host % UInt64(clusterSize) != 0 {
                    report.corruptions += 1
                    let hasData = extended ? bitmap & Self.subclustersAllocatedMask != 0 : entry & Qcow2ClusterMapping.zeroFlag == 0
                    note(hasData ? "ERROR offset=\(hex(host)): Data cluster is not properly aligned; L2 entry corrupted."
                             : "ERROR offset=\(hex(host)): Preallocated cluster is not properly aligned; L2 entry corrupted.")
                }
                if countFragments {
                    report.allocatedClusters += 1
                    if nextContiguous != 0, host != nextContiguous { report.fragmentedClusters += 1 }
                    nextContiguous = host &+ UInt64(clusterSize)
                }
                if !image.hasDataFile { increment(offset: host, bytes: UInt64(clusterSize)) }
            case .zeroPlain:
                break
            case .unallocated:
                if bitmap & Self.subclustersAllocatedMask != 0 {
                    note("ERROR: Unallocated cluster has non-zero subcluster allocation map")
                    report.corruptions += 1
                }
            }
        }
    }

    enum ClusterType { case compressed, normal, zeroAllocated, zeroPlain, unallocated }

    /// QEMU's qcow2_get_cluster_type: with subclusters the zero flag means nothing, and with an
    /// external data file offset 0 is a real cluster when COPIED says so.
    func clusterType(_ entry: UInt64) -> ClusterType {
        if entry & Qcow2ClusterMapping.compressedFlag != 0 { return .compressed }
        let host = entry & Qcow2ClusterMapping.offsetMask
        if entry & Qcow2ClusterMapping.zeroFlag != 0, !image.extendedL2 { return host != 0 ? .zeroAllocated : .zeroPlain }
        if host == 0 { return image.hasDataFile && entry & Qcow2ClusterMapping.copiedFlag != 0 ? .normal : .unallocated }
        return .normal
    }

    private var compressedOffsetMask: UInt64 { (UInt64(1) << UInt64(62 - (clusterBits - 8))) - 1 }

    private func countBitmaps() async throws {
        guard let directory = image.bitmapDirectory, directory.count > 0 else { return }
        increment(offset: directory.offset, bytes: directory.bytes)
        let bitmaps: [Qcow2Bitmap]
        do {
            bitmaps = try await image.bitmaps(io: io)
        } catch let error as Qcow2ImageError {
            report.corruptions += 1
            throw Qcow2ImageError("'\(name)': \(error.message)")
        }
        for bitmap in bitmaps {
            increment(offset: bitmap.tableOffset, bytes: UInt64(bitmap.tableEntries) * 8)
            guard bitmap.tableEntries <= Qcow2Bitmap.maxTableEntries, bitmap.tableOffset % UInt64(clusterSize) == 0,
                  bitmap.tableOffset.addingReportingOverflow(UInt64(bitmap.tableEntries) * 8).partialValue <= image.fileSize else {
                note("ERROR bitmap '\(bitmap.name)': bitmap table is invalid")
                report.corruptions += 1
                break
            }
            let table = try await io.read(offset: bitmap.tableOffset, count: Int(bitmap.tableEntries) * 8)
            for index in 0..<Int(bitmap.tableEntries) {
                let entry = table.loadBE64(at: index * 8)
                let offset = entry & Qcow2Bitmap.tableOffsetMask
                if entry & Qcow2Bitmap.tableReservedMask != 0 || (offset != 0 && (entry & 1 != 0 || offset % UInt64(clusterSize) != 0)) {
                    report.corruptions += 1
                    continue
                }
                if offset != 0 { increment(offset: offset, bytes: UInt64(clusterSize)) }
            }
        }
    }

    /// Each refcount block: a sane reftable entry, inside the image, referenced exactly once.
    private func checkRefcountBlocks(rebuild: inout Bool) async throws {
        for (index, entry) in reftable.enumerated() {
            let offset = entry & Self.reftableOffsetMask
            let cluster = offset >> UInt64(clusterBits)
            if entry & Self.reftableReservedMask != 0 {
                note("ERROR refcount table entry \(index) has reserved bits set")
                report.corruptions += 1
                rebuild = true
                continue
            }
            if offset % UInt64(clusterSize) != 0 {
                note("ERROR refcount block \(index) is not cluster aligned; refcount table entry corrupted")
                report.corruptions += 1
                rebuild = true
                continue
            }
            // Against the tracked clusters, which a rebuild may have grown past the old end.
            if cluster >= UInt64(refcounts.count) {
                note("ERROR refcount block \(index) is outside image")
                report.corruptions += 1
                rebuild = true
                continue
            }
            if offset != 0 {
                increment(offset: offset, bytes: UInt64(clusterSize))
                let count = refcounts[Int(cluster)]
                if count != 1 {
                    note("ERROR refcount block \(index) refcount=\(count)")
                    report.corruptions += 1
                    rebuild = true
                }
            }
        }
    }

    // MARK: - Stored refcounts

    /// The stored refcount of `cluster` (qcow2_get_refcount); nil when its block is unreadable.
    func storedRefcount(_ cluster: Int) async throws -> UInt64? {
        let tableIndex = cluster >> refblockBits
        guard tableIndex < reftable.count else { return 0 }
        let blockOffset = reftable[tableIndex] & Self.reftableOffsetMask
        guard blockOffset != 0 else { return 0 }
        guard blockOffset % UInt64(clusterSize) == 0 else { return nil }
        let block = try await loadBlock(blockOffset)
        return codec.get(block: block, index: cluster & ((1 << refblockBits) - 1))
    }

    private func loadBlock(_ offset: UInt64) async throws -> [UInt8] {
        if let cachedBlock, cachedBlock.offset == offset { return cachedBlock.bytes }
        try await writeBackBlock()
        let bytes = try await io.read(offset: offset, count: clusterSize)
        cachedBlock = (offset, bytes, false)
        return bytes
    }

    func writeBackBlock() async throws {
        guard let block = cachedBlock, block.dirty else { return }
        try await io.write(offset: block.offset, bytes: block.bytes)
        cachedBlock?.dirty = false
    }

    /// Stores `value` as the refcount of `cluster`, whose block exists (checked by the caller).
    private func setStoredRefcount(_ cluster: Int, _ value: UInt64) async throws {
        let blockOffset = reftable[cluster >> refblockBits] & Self.reftableOffsetMask
        _ = try await loadBlock(blockOffset)
        codec.set(block: &cachedBlock!.bytes, index: cluster & ((1 << refblockBits) - 1), value: value)
        cachedBlock!.dirty = true
    }

    // MARK: - Comparing (compare_refcounts)

    private func compareRefcounts(fixLeaks: Bool, fixErrors: Bool, rebuild: inout Bool, highest: inout Int) async throws {
        highest = 0
        for cluster in 0..<refcounts.count {
            guard let stored = try await storedRefcount(cluster) else {
                note("Can't get refcount for cluster \(cluster): Input/output error")
                report.checkErrors += 1
                continue
            }
            let computed = refcounts[cluster]
            if stored > 0 || computed > 0 { highest = cluster }
            guard stored != computed else { continue }
            var fixing = false
            if stored == 0 {
                rebuild = true
            } else if stored > computed, fixLeaks {
                fixing = true
            } else if stored < computed, fixErrors {
                fixing = true
            }
            note("\(fixing ? "Repairing" : stored < computed ? "ERROR" : "Leaked") cluster \(cluster) refcount=\(stored) reference=\(computed)")
            if fixing {
                try await setStoredRefcount(cluster, computed)
                if stored > computed { report.leaksFixed += 1 } else { report.corruptionsFixed += 1 }
                continue
            }
            if stored < computed { report.corruptions += 1 } else { report.leaks += 1 }
        }
    }

    // MARK: - COPIED flags (check_oflag_copied)

    private func checkCopiedFlags(fixLeaks: Bool, fixErrors: Bool) async throws {
        let repair = fixErrors || (fixLeaks && report.checkErrors == 0 && report.corruptions == 0 && report.leaks == 0)
        let entries = Int(image.header.l1Size)
        guard entries > 0 else { return }
        let l1Offset = image.header.l1TableOffset
        let l1 = try await io.read(offset: l1Offset, count: entries * 8)
        let copied = Qcow2ClusterMapping.copiedFlag
        for index in 0..<entries {
            let entry = l1.loadBE64(at: index * 8)
            let l2Offset = entry & Self.l1OffsetMask
            guard l2Offset != 0 else { continue }
            guard let refcount = try await storedRefcount(Int(clamping: l2Offset >> UInt64(clusterBits))) else { continue }
            if (refcount == 1) != (entry & copied != 0) {
                report.corruptions += 1
                note("\(repair ? "Repairing" : "ERROR") OFLAG_COPIED L2 cluster: l1_index=\(index) l1_entry=\(hex(entry)) refcount=\(refcount)")
                if repair {
                    var fixed = [UInt8](repeating: 0, count: 8)
                    fixed.storeBE64(refcount == 1 ? entry | copied : entry & ~copied, at: 0)
                    try await io.write(offset: l1Offset + UInt64(index) * 8, bytes: fixed)
                    report.corruptions -= 1
                    report.corruptionsFixed += 1
                }
            }
            var table = try await io.read(offset: l2Offset, count: clusterSize)
            var dirty = 0
            let entryBytes = image.l2EntryBytes
            for slot in 0..<image.l2Entries {
                let l2Entry = table.loadBE64(at: slot * entryBytes)
                let type = clusterType(l2Entry)
                guard type == .normal || type == .zeroAllocated else { continue }
                let dataRefcount: UInt64
                if image.hasDataFile {
                    dataRefcount = 1
                } else {
                    guard let stored = try await storedRefcount(Int(clamping: (l2Entry & Qcow2ClusterMapping.offsetMask) >> UInt64(clusterBits))) else { continue }
                    dataRefcount = stored
                }
                if (dataRefcount == 1) != (l2Entry & copied != 0) {
                    report.corruptions += 1
                    note("\(repair ? "Repairing" : "ERROR") OFLAG_COPIED data cluster: l2_entry=\(hex(l2Entry)) refcount=\(dataRefcount)")
                    if repair {
                        table.storeBE64(dataRefcount == 1 ? l2Entry | copied : l2Entry & ~copied, at: slot * entryBytes)
                        dirty += 1
                    }
                }
            }
            if dirty > 0 {
                try await io.write(offset: l2Offset, bytes: table)
                report.corruptions -= dirty
                report.corruptionsFixed += dirty
            }
        }
        try await io.flushIfWritten(report.corruptionsFixed > 0)
    }

    func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}

extension Qcow2ImageIO {
    func flushIfWritten(_ written: Bool) async throws {
        if written { try await flush() }
    }
}
