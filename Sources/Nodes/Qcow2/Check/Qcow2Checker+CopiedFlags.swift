// COPIED flags (check_oflag_copied).
extension Qcow2Checker {
    func checkCopiedFlags(fixLeaks: Bool, fixErrors: Bool) async throws {
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
}
