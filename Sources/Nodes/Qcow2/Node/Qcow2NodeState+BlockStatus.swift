import StrataGraph

/// What qemu-img map and convert ask of a qcow2 layer: per cluster, from the L2 entries. Runs of
/// clusters with the same status (and, for data, contiguous in the file) form one extent, at most
/// one L2 table long. Unallocated clusters are left to the caller, who asks the backing chain.
/// With extended L2 entries the status is per run of like subclusters.
extension Qcow2NodeState: BlockStatusQuerying {
    public func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let size = metadata.sizeBytes
        guard offsetBytes < size, maxLengthBytes > 0 else { return .opaqueData(lengthBytes: 0) }
        let end = offsetBytes + min(maxLengthBytes, size - offsetBytes)
        let (l1Index, firstIndex, inCluster) = metadata.locate(offsetBytes)
        let tableOffset = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
        let clusterSize = UInt64(metadata.clusterSize)
        // The end of this L2 table's coverage bounds the extent.
        let tableEnd = (offsetBytes - UInt64(inCluster)) + UInt64(metadata.l2Entries - firstIndex) * clusterSize
        let limit = min(end, tableEnd)
        guard tableOffset != 0 else {
            return BlockStatusExtent(lengthBytes: limit - offsetBytes, isData: false, isZero: false, isAllocated: false)
        }
        var first: BlockStatusExtent?
        var cursor = offsetBytes
        let firstCluster = offsetBytes - UInt64(inCluster)
        while cursor < limit {
            let index = firstIndex + Int((cursor - firstCluster) / clusterSize)
            var entry: UInt64
            var bitmap: UInt64 = 0
            do {
                entry = try await controlIO.l2Entry(metadata, tableOffset: tableOffset, index: index * metadata.l2EntryWords)
                if metadata.extendedL2 {
                    bitmap = try await controlIO.l2Entry(metadata, tableOffset: tableOffset, index: index * 2 + 1)
                    entry = Qcow2ClusterMapping.extendedEntry(entry)
                }
            } catch {
                throw GraphError.openFailed(node: configuration.file.nodeName, reason: "qcow2: could not read the L2 table at \(tableOffset): \(error.status)")
            }
            var chunk = min(limit - cursor, clusterSize - cursor % clusterSize)
            var mapping = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: metadata.hasDataFile)
            let clusterMapping = mapping
            if metadata.extendedL2 {
                guard let run = Qcow2SubclusterBitmap(bitmap).mapping(of: mapping, inCluster: Int(cursor % clusterSize), length: Int(chunk),
                                                                      subclusterBits: metadata.subclusterBits) else {
                    throw GraphError.openFailed(node: configuration.file.nodeName, reason: "qcow2: L2 entry \(index) of the table at \(tableOffset) has a corrupt subcluster bitmap")
                }
                mapping = run.mapping
                chunk = UInt64(run.bytes)
            }
            var status = Self.status(of: mapping, entry: entry, inCluster: cursor % clusterSize, length: chunk)
            // Unallocated subclusters of an allocated cluster still have their place in the file
            // (QEMU's QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC reports it).
            if case .normal(let host) = clusterMapping, case .unallocated = mapping { status.hostOffset = host + cursor % clusterSize }
            if var extent = first {
                let contiguous = extent.hostOffset.map { status.hostOffset == $0 + extent.lengthBytes } ?? (status.hostOffset == nil)
                guard status.isData == extent.isData, status.isZero == extent.isZero,
                      status.isAllocated == extent.isAllocated, contiguous else { break }
                extent.lengthBytes += chunk
                first = extent
            } else {
                first = status
            }
            cursor += chunk
        }
        return first ?? .opaqueData(lengthBytes: 0)
    }

    private static func status(of mapping: Qcow2ClusterMapping, entry: UInt64, inCluster: UInt64, length: UInt64) -> BlockStatusExtent {
        switch mapping {
        case .unallocated:
            return BlockStatusExtent(lengthBytes: length, isData: false, isZero: false, isAllocated: false)
        case .zero:
            let host = entry & Qcow2ClusterMapping.offsetMask
            return BlockStatusExtent(lengthBytes: length, isData: false, isZero: true, isAllocated: true,
                                     hostOffset: host != 0 ? host + inCluster : nil)
        case .normal(let host):
            return BlockStatusExtent(lengthBytes: length, isData: true, isZero: false, isAllocated: true, hostOffset: host + inCluster)
        case .compressed, .corrupt:
            return BlockStatusExtent(lengthBytes: length, isData: true, isZero: false, isAllocated: true)
        }
    }
}
