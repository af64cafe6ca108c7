// Computing the references from every table that points into the image (calculate_refcounts).
extension Qcow2Checker {
    func calculateRefcounts(rebuild: inout Bool, countFragments: Bool) async throws {
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
    func increment(offset: UInt64, bytes: UInt64) {
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

    func checkL1(offset: UInt64, entries: Int, active: Bool, countFragments: Bool) async throws {
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

    func checkL2(offset: UInt64, countFragments: Bool) async throws {
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

    var compressedOffsetMask: UInt64 { (UInt64(1) << UInt64(62 - (clusterBits - 8))) - 1 }

    func countBitmaps() async throws {
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
    func checkRefcountBlocks(rebuild: inout Bool) async throws {
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
}
