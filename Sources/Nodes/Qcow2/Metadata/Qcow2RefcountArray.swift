/// The reference counts the checker computes from the metadata: one entry per host cluster in
/// the image's own refcount width, laid out exactly like refcount blocks (so a rebuilt block is
/// a slice of it), as QEMU's in-memory refcount table. Its size is bounded: past `limitClusters`
/// a reference is refused instead of growing the array.
struct Qcow2RefcountArray {
    let codec: Qcow2RefcountCodec
    let clusterSize: Int
    let entriesPerBlock: Int
    let limitClusters: Int
    private(set) var bytes: [UInt8]
    /// Clusters tracked: the file's clusters, more when something references past its end.
    private(set) var count: Int

    init(codec: Qcow2RefcountCodec, clusterSize: Int, clusters: Int, limitClusters: Int) {
        self.codec = codec
        self.clusterSize = clusterSize
        entriesPerBlock = codec.entriesPerBlock(clusterSize: clusterSize)
        self.limitClusters = limitClusters
        count = clusters
        bytes = []
        bytes = [UInt8](repeating: 0, count: blockBytes(for: clusters))
    }

    /// Bytes for `clusters` entries, rounded up to whole refcount blocks.
    private func blockBytes(for clusters: Int) -> Int {
        (clusters + entriesPerBlock - 1) / entriesPerBlock * clusterSize
    }

    subscript(cluster: Int) -> UInt64 {
        get { cluster < count ? codec.get(block: bytes, index: cluster) : 0 }
        set { codec.set(block: &bytes, index: cluster, value: newValue) }
    }

    /// Tracks clusters up to `clusters` (exclusive); false past the limit.
    mutating func grow(to clusters: Int) -> Bool {
        guard clusters > count else { return true }
        guard clusters <= limitClusters else { return false }
        let needed = blockBytes(for: clusters)
        if needed > bytes.count { bytes += [UInt8](repeating: 0, count: needed - bytes.count) }
        count = clusters
        return true
    }

    mutating func reset() {
        for index in bytes.indices { bytes[index] = 0 }
    }

    /// The refcount block `index` as it would be written.
    func block(_ index: Int) -> [UInt8] {
        Array(bytes[(index * clusterSize)..<((index + 1) * clusterSize)])
    }
}
