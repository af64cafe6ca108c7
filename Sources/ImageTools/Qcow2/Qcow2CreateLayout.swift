import StrataNodes

/// Where `Qcow2Creator` puts each cluster of a new image (see there for the order).
struct Qcow2CreateLayout {
    struct L2Table {
        let cluster: UInt64
        /// The first of its data clusters in the image file, nil with an external data file.
        let dataFirstCluster: UInt64?
        let dataClusters: Int
    }

    let clusterBits: UInt32
    let clusterSize: Int
    /// The virtual size, rounded up to 512 bytes as QEMU's block layer does.
    let sizeBytes: UInt64
    let l1Entries: Int
    let l1Cluster: UInt64
    let refcountTableClusters: Int
    let refcountBlockClusters: [UInt64]
    let l2Tables: [L2Table]
    /// Clusters below this one are allocated (refcount 1).
    let totalClusters: UInt64
    let fileEnd: UInt64

    init(options: Qcow2CreateOptions) throws(ImageOptionError) {
        clusterSize = options.clusterSize
        clusterBits = UInt32(clusterSize.trailingZeroBitCount)
        let cluster = UInt64(clusterSize)
        sizeBytes = (options.sizeBytes + 511) / 512 * 512
        let l2Entries = UInt64(clusterSize / (options.extendedL2 ? 16 : 8))
        let bytesPerL1Entry = cluster * l2Entries
        l1Entries = Int((sizeBytes + bytesPerL1Entry - 1) / bytesPerL1Entry)
        let l1Clusters = UInt64((l1Entries * 8 + clusterSize - 1) / clusterSize)
        let perBlock = UInt64(clusterSize * 8 / options.refcountBits)
        let guestClusters = (sizeBytes + cluster - 1) / cluster
        // A raw external data file must stay valid as raw: QEMU maps every cluster at creation.
        let preallocate = options.preallocation == .metadata || options.dataFileRaw
        let dataInFile = preallocate && options.dataFile == nil

        // The table must hold every block: estimate from the final cluster count, grow if short.
        var estimate = 1 + l1Clusters + (preallocate ? UInt64(l1Entries) : 0) + (dataInFile ? guestClusters : 0)
        var tableClusters = 1
        while true {
            let blocks = (estimate + UInt64(tableClusters) + estimate / perBlock + 2 + perBlock - 1) / perBlock
            tableClusters = max(tableClusters, Int((blocks * 8 + cluster - 1) / cluster))
            var next: UInt64 = 1 + UInt64(tableClusters)
            var blocksAt: [UInt64] = [next]
            next += 1
            // Appends the refcount blocks that clusters below `next` need, QEMU-style.
            func cover() {
                while (next - 1) / perBlock >= UInt64(blocksAt.count) {
                    blocksAt.append(next)
                    next += 1
                }
            }
            let l1At = next
            next += l1Entries == 0 ? 0 : l1Clusters
            var end = l1At * cluster + UInt64(l1Entries * 8)
            cover()
            var tables: [L2Table] = []
            if preallocate {
                for index in 0..<UInt64(l1Entries) {
                    let tableAt = next
                    next += 1
                    let count = min(l2Entries, guestClusters - index * l2Entries)
                    var dataAt: UInt64?
                    if dataInFile {
                        dataAt = next
                        next += count
                    }
                    tables.append(L2Table(cluster: tableAt, dataFirstCluster: dataAt, dataClusters: Int(count)))
                    end = next * cluster
                    cover()
                }
            }
            end = max(end, blocksAt.last! * cluster + cluster)
            if blocksAt.count * 8 <= tableClusters * clusterSize {
                refcountTableClusters = tableClusters
                refcountBlockClusters = blocksAt
                l1Cluster = l1At
                l2Tables = tables
                totalClusters = next
                fileEnd = end
                break
            }
            tableClusters += 1
            estimate = next
        }
        guard UInt64(refcountTableClusters) * cluster <= Qcow2Header.maxRefcountTableBytes else {
            throw ImageOptionError("Image size is too large for this cluster size and refcount width")
        }
    }
}
