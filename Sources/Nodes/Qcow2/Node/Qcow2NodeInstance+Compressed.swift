import StrataGraph
import StrataRuntime

// Compressed writes and the compressor.
extension Qcow2NodeInstance {
    /// A compressed write of whole clusters (the last may end at the image's end), one cluster
    /// at a time, as QEMU's qcow2_co_pwritev_compressed splits it; the first failure ends it.
    func compressedWrites(from source: UnsafeRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        let clusterSize = metadata.clusterSize
        guard offset % UInt64(clusterSize) == 0, length % clusterSize == 0 || offset + UInt64(length) == metadata.sizeBytes else {
            return .invalid
        }
        var done = 0
        while done < length {
            let chunk = min(clusterSize, length - done)
            let status = await compressedWrite(from: source + done, length: chunk, at: offset + UInt64(done))
            guard status.isOK else { return status }
            done += chunk
        }
        return .ok
    }

    /// Stores one whole cluster (or the image's last, partial one) deflated, packed into host
    /// clusters shared with other compressed clusters, as QEMU's qcow2_co_pwritev_compressed.
    /// Data that does not shrink is written as a normal cluster. Like QEMU, it only fills clusters
    /// that hold nothing yet.
    func compressedWrite(from source: UnsafeRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        guard let allocator else { return .readOnly }
        let clusterSize = metadata.clusterSize
        guard offset % UInt64(clusterSize) == 0,
              length == clusterSize || (length < clusterSize && offset + UInt64(length) == metadata.sizeBytes) else {
            return .invalid
        }
        // Data files hold no compressed clusters (QEMU refuses them too).
        guard !hasDataFile else { return .notSupported }
        let input: BounceBufferPool.Buffer = clusterPool.take()
        let output: BounceBufferPool.Buffer = clusterPool.take()
        defer {
            clusterPool.give(output)
            clusterPool.give(input)
        }
        // A short last cluster is compressed as a whole cluster padded with zeros, as QEMU does.
        input.base.copyMemory(from: source, byteCount: length)
        if length < clusterSize { (input.base + length).initializeMemory(as: UInt8.self, repeating: 0, count: clusterSize - length) }
        guard let compressedBytes = compress(input.base, clusterSize, into: output.base, capacity: clusterSize - 1) else {
            return await write(from: source, length: length, at: offset, fua: false)
        }
        await allocator.lock.lock()
        while allocator.isInFlight(guestCluster: offset / UInt64(clusterSize)) {
            await allocator.waitForAllocation(ofGuestCluster: offset / UInt64(clusterSize))
            await allocator.lock.lock()
        }
        defer { allocator.lock.unlock() }
        guard !allocator.refusesWrites else { return .ioError }
        do {
            let (l1Index, l2Index, _) = metadata.locate(offset)
            let table = try await allocator.writableTable(l1Index: l1Index, io: io)
            // Extended L2 entries are two words: the mapping, then the subcluster bitmap.
            let word = l2Index * metadata.l2EntryWords
            var old = try await allocator.tableWord(table, index: word, io: io)
            if extendedL2 { old = Qcow2ClusterMapping.extendedEntry(old) }
            switch Qcow2ClusterMapping(l2Entry: old, clusterBits: metadata.clusterBits) {
            case .unallocated: break
            case .zero where old & Qcow2ClusterMapping.offsetMask == 0: break
            default: return .ioError
            }
            let host = try await allocator.refcounts.allocateBytes(compressedBytes, io: io)
            try allocator.checkOverlap(offset: host, length: compressedBytes, kind: .data)
            try await io.write(from: output.base, length: compressedBytes, at: host, event: .writeCompressed)
            // Additional 512-byte sectors the data touches, in the bits above the offset.
            let sizeShift = 62 - UInt64(metadata.clusterBits - 8)
            let extraSectors = ((host + UInt64(compressedBytes) - 1) >> 9) - (host >> 9)
            let entry = Qcow2ClusterMapping.compressedFlag | (extraSectors << sizeShift) | host
            // As QEMU: a compressed cluster has no subclusters, so its bitmap (zero bits included) is cleared.
            if extendedL2 { try await allocator.setTableWord(0, tableOffset: table, index: word + 1, io: io) }
            try await allocator.setTableWord(entry, tableOffset: table, index: word, io: io)
            return .ok
        } catch {
            if allocator.isCorrupt { await allocator.markCorrupt(io: io) }
            return error.status
        }
    }

    /// Compresses with the image's compression type (header byte 104): zlib or zstd.
    func compress(_ input: UnsafeRawPointer, _ count: Int, into output: UnsafeMutableRawPointer, capacity: Int) -> Int? {
        if metadata.header.compressionType == 1 {
            if zstdCompressor == nil { zstdCompressor = Qcow2ZstdCompressor() }
            return zstdCompressor?.compress(input: input, inputCount: count, output: output, outputCapacity: capacity)
        }
        if compressor == nil { compressor = Qcow2Compressor() }
        return compressor?.compress(input: input, inputCount: count, output: output, outputCapacity: capacity)
    }

    /// Reads a compressed cluster's deflate data (clipped at the end of the file, the rest zero,
    /// as QEMU reads it) and inflates the whole cluster, then copies out the requested part.
    func readCompressed(into base: UnsafeMutableRawPointer, length: Int, inCluster: Int,
                        hostOffset: UInt64, compressedBytes: Int) async -> IOStatus {
        let clusterSize = metadata.clusterSize
        let fileSizeBytes = fileState.current.sizeBytes
        // QEMU calls a compressed cluster in an image with a data file corruption.
        guard !hasDataFile, hostOffset >= UInt64(clusterSize), hostOffset < fileSizeBytes,
              compressedBytes <= 2 * clusterSize else { return .ioError }
        let pool: BounceBufferPool
        if let compressedPool {
            pool = compressedPool
        } else {
            pool = BounceBufferPool(count: 1, bufferSize: 3 * clusterSize, alignment: 4096, numaNode: executor.numaNode)
            compressedPool = pool
        }
        let buffer = pool.take()
        defer { pool.give(buffer) }
        let inputCount = Int(min(UInt64(compressedBytes), fileSizeBytes - hostOffset))
        let status = await readFile(into: buffer.base, length: inputCount, at: hostOffset, event: .readCompressed)
        guard status.isOK else { return status }
        let output = buffer.base + 2 * clusterSize
        guard decompress(input: buffer.base, inputCount: inputCount, output: output, outputCount: clusterSize) else {
            return .ioError
        }
        base.copyMemory(from: output + inCluster, byteCount: length)
        return .ok
    }

    /// One cluster from its compressed data, with the image's compression type (header byte 104).
    func decompress(input: UnsafeMutableRawPointer, inputCount: Int, output: UnsafeMutableRawPointer, outputCount: Int) -> Bool {
        if metadata.header.compressionType == 1 {
            if zstdDecompressor == nil { zstdDecompressor = Qcow2ZstdDecompressor() }
            guard let zstdDecompressor else { return false }
            return zstdDecompressor.decompress(input: input, inputCount: inputCount, output: output, outputCount: outputCount)
        }
        if decompressor == nil { decompressor = Qcow2Decompressor() }
        guard let decompressor else { return false }
        return decompressor.inflate(input: input, inputCount: inputCount, output: output, outputCount: outputCount)
    }
}
