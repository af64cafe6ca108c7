import StrataNodes

/// `qemu-img measure -O qcow2` (QEMU's qcow2_measure): the file size a new qcow2 image needs
/// for a virtual size, fully allocated and with only `allocatedBytes` of guest data.
public struct Qcow2Measure: Sendable, Equatable {
    public let required: UInt64
    public let fullyAllocated: UInt64
    /// Space for the source's persistent bitmaps; nil when qemu-img would not report it.
    public let bitmaps: UInt64?

    /// One persistent bitmap of the source: its name, the source's size and the granularity.
    public struct SourceBitmap: Sendable {
        public let name: String
        public let sizeBytes: UInt64
        public let granularity: UInt64

        public init(name: String, sizeBytes: UInt64, granularity: UInt64) {
            self.name = name
            self.sizeBytes = sizeBytes
            self.granularity = granularity
        }
    }

    /// `options` are the target's create options (size included, or the source's size).
    /// `allocatedBytes` is the source's data rounded to target clusters as QEMU counts it (nil
    /// without a source: only metadata is required). `sourceBitmaps` non-nil reports "bitmaps".
    public init(options: Qcow2CreateOptions, allocatedBytes: UInt64?, sourceBitmaps: [SourceBitmap]? = nil) throws(ImageOptionError) {
        try options.validate()
        let cluster = UInt64(options.clusterSize)
        let virtual = (options.sizeBytes + cluster - 1) / cluster * cluster
        fullyAllocated = Self.preallocatedSize(virtual: virtual, clusterSize: cluster,
                                               refcountBits: UInt64(options.refcountBits), extendedL2: options.extendedL2)
        // Without a source nothing is written yet; with one, a backing file of the target may
        // share nothing with it, so all of it counts (as qcow2_measure).
        let data: UInt64 = if let allocatedBytes { options.backingFile != nil ? virtual : min(allocatedBytes, virtual) } else { 0 }
        required = fullyAllocated - virtual + data
        if let sourceBitmaps, options.version >= 3 {
            var total: UInt64 = 0
            var directory: UInt64 = 0
            for bitmap in sourceBitmaps {
                let bits = (bitmap.sizeBytes + bitmap.granularity - 1) / bitmap.granularity
                let clusters = ((bits + 7) / 8 + cluster - 1) / cluster
                total += clusters * cluster
                total += (clusters * 8 + cluster - 1) / cluster * cluster
                directory += (24 + UInt64(bitmap.name.utf8.count) + 7) / 8 * 8
            }
            bitmaps = total + (directory + cluster - 1) / cluster * cluster
        } else {
            bitmaps = nil
        }
    }

    /// The bytes a fully allocated image takes: header, L2 and L1 tables rounded to clusters,
    /// the data, and refcount metadata for all of it (qcow2_calc_prealloc_size).
    static func preallocatedSize(virtual: UInt64, clusterSize: UInt64, refcountBits: UInt64, extendedL2: Bool) -> UInt64 {
        let l2EntryBytes: UInt64 = extendedL2 ? 16 : 8
        var meta = clusterSize
        let perL2 = clusterSize / l2EntryBytes
        let l2Entries = (virtual / clusterSize + perL2 - 1) / perL2 * perL2
        meta += l2Entries * l2EntryBytes
        let perL1Cluster = clusterSize / 8
        let l1Entries = (l2Entries * l2EntryBytes / clusterSize + perL1Cluster - 1) / perL1Cluster * perL1Cluster
        meta += l1Entries * 8
        meta += refcountMetadataBytes(clusters: (meta + virtual) / clusterSize, clusterSize: clusterSize, refcountBits: refcountBits)
        return meta + virtual
    }

    /// Refcount table and block bytes for `clusters` clusters, themselves included: the fixed
    /// point where more blocks need no more table (qcow2_refcount_metadata_size).
    static func refcountMetadataBytes(clusters: UInt64, clusterSize: UInt64, refcountBits: UInt64) -> UInt64 {
        let blocksPerTableCluster = clusterSize / 8
        let refcountsPerBlock = clusterSize * 8 / refcountBits
        var table: UInt64 = 0
        var blocks: UInt64 = 0
        var total: UInt64 = 0
        while true {
            let last = total
            blocks = (clusters + table + blocks + refcountsPerBlock - 1) / refcountsPerBlock
            table = (blocks + blocksPerTableCluster - 1) / blocksPerTableCluster
            total = clusters + blocks + table
            if total == last { break }
        }
        return (blocks + table) * clusterSize
    }

    public var json: String {
        var lines: [String] = []
        if let bitmaps { lines.append("    \"bitmaps\": \(bitmaps)") }
        lines.append("    \"required\": \(required)")
        lines.append("    \"fully-allocated\": \(fullyAllocated)")
        return "{\n" + lines.joined(separator: ",\n") + "\n}"
    }

    public var human: String {
        var text = "required size: \(required)\nfully allocated size: \(fullyAllocated)\n"
        if let bitmaps { text += "bitmaps size: \(bitmaps)\n" }
        return text
    }
}
