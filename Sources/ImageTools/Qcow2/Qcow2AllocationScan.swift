import StrataNodes

/// The guest ranges of a qcow2 image (its own layer only) that hold data, as block status
/// reports them to `qemu-img measure`: normal and compressed clusters (allocated subclusters
/// with extended L2 entries); zero and unallocated clusters hold none. Bounded by the L1 size
/// the header validated.
public enum Qcow2AllocationScan {
    /// Sorted, merged [start, end) guest byte ranges.
    public static func dataRanges(io: any Qcow2ImageIO, image: Qcow2OfflineImage) async throws -> [Range<UInt64>] {
        let cluster = image.clusterSize
        let entries = Int(image.header.l1EntriesNeeded)
        guard entries > 0 else { return [] }
        let l1 = try await io.read(offset: image.header.l1TableOffset, count: entries * 8)
        var ranges: [Range<UInt64>] = []
        func add(_ start: UInt64, _ end: UInt64) {
            let end = min(end, image.virtualSize)
            guard start < end else { return }
            if let last = ranges.last, last.upperBound == start {
                ranges[ranges.count - 1] = last.lowerBound..<end
            } else {
                ranges.append(start..<end)
            }
        }
        let perTable = UInt64(image.l2Entries)
        for index in 0..<entries {
            let l2Offset = l1.loadBE64(at: index * 8) & Qcow2Checker.l1OffsetMask
            guard l2Offset != 0 else { continue }
            let table = try await io.read(offset: l2Offset, count: Int(cluster))
            for slot in 0..<image.l2Entries {
                let entry = table.loadBE64(at: slot * image.l2EntryBytes)
                let guest = (UInt64(index) * perTable + UInt64(slot)) * cluster
                guard guest < image.virtualSize else { break }
                if entry & Qcow2ClusterMapping.compressedFlag != 0 {
                    add(guest, guest + cluster)
                    continue
                }
                if image.extendedL2 {
                    let bitmap = table.loadBE64(at: slot * 16 + 8)
                    let hasHost = entry & Qcow2ClusterMapping.offsetMask != 0 || (image.hasDataFile && entry & Qcow2ClusterMapping.copiedFlag != 0)
                    guard hasHost else { continue }
                    let sub = cluster / 32
                    for bit in 0..<32 where bitmap & (UInt64(1) << UInt64(bit)) != 0 && bitmap & (UInt64(1) << UInt64(bit + 32)) == 0 {
                        add(guest + UInt64(bit) * sub, guest + UInt64(bit + 1) * sub)
                    }
                    continue
                }
                if entry & Qcow2ClusterMapping.zeroFlag != 0 { continue }
                if entry & Qcow2ClusterMapping.offsetMask != 0 || (image.hasDataFile && entry & Qcow2ClusterMapping.copiedFlag != 0) {
                    add(guest, guest + cluster)
                }
            }
        }
        return ranges
    }

    /// The bytes qemu-img measure counts for `ranges` in a target of `clusterSize`: every
    /// target cluster a range touches, whole.
    public static func requiredBytes(_ ranges: [Range<UInt64>], clusterSize: UInt64) -> UInt64 {
        var total: UInt64 = 0
        var countedUpTo: UInt64 = 0
        for range in ranges {
            let start = max(range.lowerBound / clusterSize * clusterSize, countedUpTo)
            let end = (range.upperBound + clusterSize - 1) / clusterSize * clusterSize
            guard end > start else { continue }
            total += end - start
            countedUpTo = end
        }
        return total
    }
}
