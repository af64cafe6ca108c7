import StrataGraph

extension Qcow2Allocator {
    /// Writes `bitmaps` as the image's persistent bitmaps, replacing what the image held
    /// (`old`, the directory read at open): data clusters and tables, then the directory, then
    /// the header extension naming it (each step durable before the next), then frees the old
    /// ones. Clusters of a bitmap that are all clear are not allocated (table entry 0).
    nonisolated(nonsending) func storeBitmaps(_ bitmaps: [DirtyBitmap], old: [Qcow2Bitmap], oldDirectory: (offset: UInt64, bytes: UInt64)?,
                                             io: Qcow2ChildIO) async throws(Qcow2Failure) {
        assert(lock.isHeldByCurrentTask, "the calling task holds the qcow2 allocation lock")
        let clusterSize = metadata.clusterSize
        let bitsPerCluster = clusterSize * 8
        var directory: [UInt8] = []
        for bitmap in bitmaps {
            let bits = bitmap.bits
            let entries = (bits.bitCount + bitsPerCluster - 1) / bitsPerCluster
            var table = [UInt64](repeating: 0, count: entries)
            if !bitmap.isInconsistent {
                for index in 0..<entries {
                    let first = index * bitsPerCluster
                    let count = min(bitsPerCluster, bits.bitCount - first)
                    guard bits.anySet(first...(first + count - 1)) else { continue }
                    var data = bits.serialize(firstBit: first, count: count)
                    data += [UInt8](repeating: 0, count: clusterSize - data.count)
                    table[index] = try await writeNewClusters(bytes: data, io: io)
                }
            }
            var tableBytes = [UInt8](repeating: 0, count: max(8, entries * 8))
            tableBytes.withUnsafeMutableBytes { raw in
                for (index, entry) in table.enumerated() { raw.storeBytes(of: entry.bigEndian, toByteOffset: index * 8, as: UInt64.self) }
            }
            let tableOffset = entries > 0 ? try await writeNewClusters(bytes: tableBytes, io: io) : 0
            var flags: UInt32 = bitmap.isInconsistent ? Qcow2BitmapImage.inUseFlag : 0
            if bitmap.isEnabled { flags |= Qcow2BitmapImage.autoFlag }
            directory += Qcow2BitmapImage.directoryEntry(name: bitmap.name ?? "", tableOffset: tableOffset, tableEntries: UInt32(entries),
                                                         flags: flags, granularity: bitmap.granularity)
        }
        let directoryOffset = directory.isEmpty ? 0 : try await writeNewClusters(bytes: directory, io: io)
        _ = try await refcounts.writeback(io: io)
        try await io.flush()

        // The header names the new directory, and the autoclear bit vouches for it.
        let head = try await readBytes(count: clusterSize, at: 0, io: io)
        var extensionData: [UInt8]?
        if !bitmaps.isEmpty {
            extensionData = Qcow2BitmapImage.bigEndianBytes(UInt64(bitmaps.count), 4) + [0, 0, 0, 0]
                + Qcow2BitmapImage.bigEndianBytes(UInt64(directory.count), 8) + Qcow2BitmapImage.bigEndianBytes(directoryOffset, 8)
        }
        guard var updated = Qcow2BitmapImage.header(head, headerLength: Int(metadata.header.headerLength), clusterSize: clusterSize,
                                                    bitmapsExtension: extensionData) else { throw .corrupt }
        var autoclear = updated.loadBE64(at: 88)
        autoclear = bitmaps.isEmpty ? autoclear & ~Qcow2Header.bitmapsAutoclearBit : autoclear | Qcow2Header.bitmapsAutoclearBit
        updated.replaceSubrange(88..<96, with: Qcow2BitmapImage.bigEndianBytes(autoclear, 8))
        try await writeHeader(updated, at: 0, io: io)
        try await io.flush()

        // Nothing durable names the old bitmaps now.
        for entry in old where entry.tableEntries > 0 && entry.tableOffset != 0 {
            let count = Int(entry.tableEntries)
            let table = try await readBytes(count: count * 8, at: entry.tableOffset, io: io)
            for index in 0..<count {
                let offset = table.loadBE64(at: index * 8) & Qcow2Bitmap.tableOffsetMask
                if offset != 0 { try await releaseClusters(offset: offset, bytes: UInt64(clusterSize), io: io) }
            }
            try await releaseClusters(offset: entry.tableOffset, bytes: UInt64(count * 8), io: io)
        }
        if let oldDirectory, oldDirectory.offset != 0 {
            try await releaseClusters(offset: oldDirectory.offset, bytes: oldDirectory.bytes, io: io)
        }
        _ = try await refcounts.writeback(io: io)
        try await io.flush()
    }

    private nonisolated(nonsending) func readBytes(count: Int, at offset: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) -> [UInt8] {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
        defer { memory.deallocate() }
        try await io.read(into: memory, length: count, at: offset, event: .otherMetadata)
        return Array(UnsafeRawBufferPointer(start: memory, count: count))
    }
}
