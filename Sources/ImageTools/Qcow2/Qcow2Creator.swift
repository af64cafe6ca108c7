import StrataNodes

/// Creates a qcow2 image as `qemu-img create -f qcow2` lays it out: the header in cluster 0, the
/// refcount table from cluster 1, the first refcount block after it, then the L1 table; with
/// `preallocation=metadata`, each L2 table followed by its data clusters (none with an external
/// data file, where host offsets equal guest offsets); refcount blocks are appended as soon as
/// allocated clusters run past the ones already covered, as QEMU's allocator does.
public enum Qcow2Creator {
    /// Creates the image at `path` (and the external data file, relative to the working
    /// directory as qemu-img does). An existing file is truncated.
    public static func create(path: String, options: Qcow2CreateOptions) async throws {
        try options.validate()
        let io = try Qcow2FileIO(path: path, writable: true, create: true)
        var dataIO: Qcow2FileIO?
        if let dataFile = options.dataFile {
            dataIO = try Qcow2FileIO(path: dataFile, writable: true, create: true)
        }
        try await create(io: io, dataFileIO: dataIO, options: options)
    }

    /// Writes the image through `io` (which should be empty); `dataFileIO` is the external data
    /// file, sized to the virtual size.
    public static func create(io: any Qcow2ImageIO, dataFileIO: (any Qcow2ImageIO)?, options: Qcow2CreateOptions) async throws {
        try options.validate()
        let layout = try Qcow2CreateLayout(options: options)
        var header = Qcow2HeaderWriter()
        header.version = options.version
        header.backingFile = options.backingFile
        header.backingFormat = options.backingFormat
        header.dataFile = options.dataFile
        header.clusterBits = layout.clusterBits
        header.sizeBytes = layout.sizeBytes
        header.l1Size = UInt32(layout.l1Entries)
        header.l1TableOffset = layout.l1Entries == 0 ? 0 : layout.l1Cluster << UInt64(layout.clusterBits)
        header.refcountTableOffset = UInt64(layout.clusterSize)
        header.refcountTableClusters = UInt32(layout.refcountTableClusters)
        header.refcountOrder = UInt32(options.refcountBits.trailingZeroBitCount)
        if options.version >= 3 {
            if options.dataFile != nil { header.incompatibleFeatures |= Qcow2Header.externalDataFileBit }
            if options.compressionType == .zstd {
                header.incompatibleFeatures |= Qcow2Header.compressionTypeBit
                header.compressionType = 1
            }
            if options.extendedL2 { header.incompatibleFeatures |= Qcow2Header.extendedL2Bit }
            if options.lazyRefcounts { header.compatibleFeatures |= Qcow2HeaderWriter.lazyRefcountsBit }
            if options.dataFileRaw { header.autoclearFeatures |= Qcow2HeaderWriter.rawDataFileAutoclearBit }
        }
        let headerBytes = try header.serialize()

        if let dataFileIO { try await dataFileIO.truncate(to: layout.sizeBytes) }
        try await io.truncate(to: 0)
        try await io.write(offset: 0, bytes: headerBytes)
        let clusterSize = UInt64(layout.clusterSize)

        // Refcount table and blocks: every cluster below the end has refcount 1.
        var table = [UInt8](repeating: 0, count: layout.refcountTableClusters * layout.clusterSize)
        for (index, cluster) in layout.refcountBlockClusters.enumerated() { table.storeBE64(cluster * clusterSize, at: index * 8) }
        try await io.write(offset: clusterSize, bytes: table)
        let codec = Qcow2RefcountCodec(order: header.refcountOrder)
        let perBlock = UInt64(codec.entriesPerBlock(clusterSize: layout.clusterSize))
        for (index, cluster) in layout.refcountBlockClusters.enumerated() {
            var block = [UInt8](repeating: 0, count: layout.clusterSize)
            let first = UInt64(index) * perBlock
            let count = Int(min(perBlock, layout.totalClusters - first))
            for entry in 0..<count { codec.set(block: &block, index: entry, value: 1) }
            try await io.write(offset: cluster * clusterSize, bytes: block)
        }

        // L1 (and with preallocation, L2 tables: their data clusters are only referenced).
        let l2EntryBytes = options.extendedL2 ? 16 : 8
        let l2Entries = layout.clusterSize / l2EntryBytes
        var l1 = [UInt8](repeating: 0, count: layout.l1Entries * 8)
        for (index, table) in layout.l2Tables.enumerated() {
            l1.storeBE64(table.cluster * clusterSize | Qcow2ClusterMapping.copiedFlag, at: index * 8)
            var l2 = [UInt8](repeating: 0, count: layout.clusterSize)
            for entry in 0..<table.dataClusters {
                let host = table.dataFirstCluster.map { ($0 + UInt64(entry)) * clusterSize }
                    ?? (UInt64(index) * UInt64(l2Entries) + UInt64(entry)) * clusterSize
                l2.storeBE64(host | Qcow2ClusterMapping.copiedFlag, at: entry * l2EntryBytes)
            }
            try await io.write(offset: table.cluster * clusterSize, bytes: l2)
        }
        try await io.write(offset: layout.l1Cluster * clusterSize, bytes: l1)
        try await io.truncate(to: layout.fileEnd)
        try await io.flush()
        if let dataFileIO { try await dataFileIO.flush() }
    }
}
