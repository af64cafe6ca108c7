import StrataGraph

/// Persistent dirty bitmaps in a qcow2 image (docs/interop/qcow2.rst, "Bitmaps"): loaded into
/// `DirtyBitmap`s at open, and written back whole at close, as QEMU's qcow2-bitmap.c does:
/// new data clusters, tables and directory first, then the header names them, then the old
/// ones are freed. A crash in between leaks clusters at worst, and leaves bitmaps in use.
enum Qcow2BitmapImage {
    static let inUseFlag: UInt32 = 1 << 0
    static let autoFlag: UInt32 = 1 << 1
    /// QEMU's BME_MIN_GRANULARITY_BITS and BME_MAX_GRANULARITY_BITS.
    static let granularityBits: ClosedRange<UInt8> = 9...31
    static let dirtyTrackingType: UInt8 = 1

    /// The bitmaps the image holds, as DirtyBitmaps of a node of `sizeBytes`: recording where the
    /// `auto` flag says so, inconsistent where the in-use flag was already set (the image was not
    /// closed cleanly since), with the bits the bitmap clusters hold.
    static func load(_ bitmaps: [Qcow2Bitmap], reader: Qcow2OpenReader, clusterSize: Int, sizeBytes: UInt64,
                     fileSize: UInt64, fail: (String) -> GraphError) async throws(GraphError) -> [DirtyBitmap] {
        var loaded: [DirtyBitmap] = []
        for entry in bitmaps {
            guard granularityBits.contains(entry.granularityBits) else {
                throw fail("bitmap '\(entry.name)' has an invalid granularity (2^\(entry.granularityBits) bytes)")
            }
            let inUse = entry.flags & inUseFlag != 0
            let bitmap = DirtyBitmap(name: entry.name, sizeBytes: sizeBytes, granularity: entry.granularity,
                                     recording: entry.flags & autoFlag != 0, persistent: true, inconsistent: inUse)
            let bitsPerCluster = clusterSize * 8
            let needed = (bitmap.bits.bitCount + bitsPerCluster - 1) / bitsPerCluster
            guard Int(entry.tableEntries) == needed else {
                throw fail("bitmap '\(entry.name)' has a table of \(entry.tableEntries) entries; its size needs \(needed)")
            }
            if !inUse && needed > 0 {
                guard entry.tableOffset % UInt64(clusterSize) == 0, entry.tableOffset <= fileSize else {
                    throw fail("bitmap '\(entry.name)' has a misplaced table")
                }
                let table = try await reader.read(offset: entry.tableOffset, count: needed * 8, what: "bitmap table of '\(entry.name)'")
                for index in 0..<needed {
                    let word = table.loadBE64(at: index * 8)
                    let offset = word & Qcow2Bitmap.tableOffsetMask
                    let firstBit = index * bitsPerCluster
                    if offset == 0 {
                        if word & 1 != 0 { bitmap.bits.setBits(firstBit...min(firstBit + bitsPerCluster, bitmap.bits.bitCount) - 1) }
                        continue
                    }
                    guard word & Qcow2Bitmap.tableReservedMask == 0, offset % UInt64(clusterSize) == 0, offset < fileSize else {
                        throw fail("bitmap '\(entry.name)' has an invalid table entry \(index)")
                    }
                    let data = try await reader.read(offset: offset, count: clusterSize, what: "bitmap data of '\(entry.name)'")
                    bitmap.bits.deserialize(data, firstBit: firstBit)
                }
            }
            loaded.append(bitmap)
        }
        return loaded
    }

    /// One directory entry: table, flags, type, granularity, the name padded to 8 bytes.
    static func directoryEntry(name: String, tableOffset: UInt64, tableEntries: UInt32, flags: UInt32, granularity: UInt64) -> [UInt8] {
        let nameBytes = Array(name.utf8)
        var entry = [UInt8](repeating: 0, count: 24)
        entry.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: tableOffset.bigEndian, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: tableEntries.bigEndian, toByteOffset: 8, as: UInt32.self)
            raw.storeBytes(of: flags.bigEndian, toByteOffset: 12, as: UInt32.self)
            raw.storeBytes(of: dirtyTrackingType, toByteOffset: 16, as: UInt8.self)
            raw.storeBytes(of: UInt8(granularity.trailingZeroBitCount), toByteOffset: 17, as: UInt8.self)
            raw.storeBytes(of: UInt16(nameBytes.count).bigEndian, toByteOffset: 18, as: UInt16.self)
        }
        entry += nameBytes
        entry += [UInt8](repeating: 0, count: (8 - entry.count % 8) % 8)
        return entry
    }

    /// The image's first cluster with the bitmaps extension set to `data` (removed when nil),
    /// other extensions and the backing file name kept.
    static func header(_ bytes: [UInt8], headerLength: Int, clusterSize: Int, bitmapsExtension data: [UInt8]?) -> [UInt8]? {
        let backingOffset = Int(bytes.loadBE64(at: 8))
        let backingLength = Int(bytes.loadBE32(at: 16))
        let extensionsEnd = backingOffset != 0 ? backingOffset : min(bytes.count, clusterSize)
        var kept: [(type: UInt32, data: [UInt8])] = []
        var offset = headerLength
        while offset + 8 <= extensionsEnd {
            let type = bytes.loadBE32(at: offset)
            let length = Int(bytes.loadBE32(at: offset + 4))
            if type == Qcow2HeaderExtension.endType { break }
            guard offset + 8 + length <= bytes.count else { return nil }
            if type != Qcow2HeaderExtension.bitmapsType { kept.append((type, Array(bytes[offset + 8..<offset + 8 + length]))) }
            offset += 8 + ((length + 7) & ~7)
        }
        // After the feature name table, as qcow2_update_header writes it; else after the rest.
        if let data {
            let position = kept.firstIndex { $0.type == Qcow2HeaderExtension.featureNameTableType }.map { $0 + 1 } ?? kept.count
            kept.insert((Qcow2HeaderExtension.bitmapsType, data), at: position)
        }
        var area: [UInt8] = []
        for (type, data) in kept {
            area += bigEndianBytes(UInt64(type), 4) + bigEndianBytes(UInt64(data.count), 4) + data
            area += [UInt8](repeating: 0, count: (8 - data.count % 8) % 8)
        }
        area += [UInt8](repeating: 0, count: 8)
        let name = backingOffset != 0 && backingOffset + backingLength <= bytes.count ? Array(bytes[backingOffset..<backingOffset + backingLength]) : []
        guard headerLength + area.count + name.count <= clusterSize else { return nil }
        var result = Array(bytes.prefix(headerLength))
        if !name.isEmpty { result.replaceSubrange(8..<16, with: bigEndianBytes(UInt64(headerLength + area.count), 8)) }
        result += area + name
        let oldEnd = max(offset + 8, backingOffset + backingLength)
        if result.count < min(oldEnd, bytes.count) { result += [UInt8](repeating: 0, count: min(oldEnd, bytes.count) - result.count) }
        return result
    }

    static func bigEndianBytes(_ value: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * (count - 1 - $0))) }
    }
}
