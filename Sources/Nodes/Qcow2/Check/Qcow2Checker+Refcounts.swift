// Stored refcounts, and comparing them with the computed ones (compare_refcounts).
extension Qcow2Checker {
    /// The stored refcount of `cluster` (qcow2_get_refcount); nil when its block is unreadable.
    func storedRefcount(_ cluster: Int) async throws -> UInt64? {
        let tableIndex = cluster >> refblockBits
        guard tableIndex < reftable.count else { return 0 }
        let blockOffset = reftable[tableIndex] & Self.reftableOffsetMask
        guard blockOffset != 0 else { return 0 }
        guard blockOffset % UInt64(clusterSize) == 0 else { return nil }
        let block = try await loadBlock(blockOffset)
        return codec.get(block: block, index: cluster & ((1 << refblockBits) - 1))
    }

    func loadBlock(_ offset: UInt64) async throws -> [UInt8] {
        if let cachedBlock, cachedBlock.offset == offset { return cachedBlock.bytes }
        try await writeBackBlock()
        let bytes = try await io.read(offset: offset, count: clusterSize)
        cachedBlock = (offset, bytes, false)
        return bytes
    }

    func writeBackBlock() async throws {
        guard let block = cachedBlock, block.dirty else { return }
        try await io.write(offset: block.offset, bytes: block.bytes)
        cachedBlock?.dirty = false
    }

    /// Stores `value` as the refcount of `cluster`, whose block exists (checked by the caller).
    func setStoredRefcount(_ cluster: Int, _ value: UInt64) async throws {
        let blockOffset = reftable[cluster >> refblockBits] & Self.reftableOffsetMask
        _ = try await loadBlock(blockOffset)
        codec.set(block: &cachedBlock!.bytes, index: cluster & ((1 << refblockBits) - 1), value: value)
        cachedBlock!.dirty = true
    }

    func compareRefcounts(fixLeaks: Bool, fixErrors: Bool, rebuild: inout Bool, highest: inout Int) async throws {
        highest = 0
        for cluster in 0..<refcounts.count {
            guard let stored = try await storedRefcount(cluster) else {
                note("Can't get refcount for cluster \(cluster): Input/output error")
                report.checkErrors += 1
                continue
            }
            let computed = refcounts[cluster]
            if stored > 0 || computed > 0 { highest = cluster }
            guard stored != computed else { continue }
            var fixing = false
            if stored == 0 {
                rebuild = true
            } else if stored > computed, fixLeaks {
                fixing = true
            } else if stored < computed, fixErrors {
                fixing = true
            }
            note("\(fixing ? "Repairing" : stored < computed ? "ERROR" : "Leaked") cluster \(cluster) refcount=\(stored) reference=\(computed)")
            if fixing {
                try await setStoredRefcount(cluster, computed)
                if stored > computed { report.leaksFixed += 1 } else { report.corruptionsFixed += 1 }
                continue
            }
            if stored < computed { report.corruptions += 1 } else { report.leaks += 1 }
        }
    }
}
