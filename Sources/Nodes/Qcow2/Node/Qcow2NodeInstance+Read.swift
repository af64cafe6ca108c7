import Glibc
import StrataGraph
import StrataRuntime

// Reads: runs of contiguous clusters, zero and backing clusters, splice reads, L2 lookups.
extension Qcow2NodeInstance {
    func read(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        // A run of normal clusters that are contiguous in the file too, not read yet.
        var runHost: UInt64 = 0
        var runStart = 0
        var runLength = 0
        var done = 0
        while done < length {
            let guestOffset = offset + UInt64(done)
            let (l1Index, l2Index, inCluster) = metadata.locate(guestOffset)
            var chunk = min(length - done, metadata.clusterSize - inCluster)
            var mapping: Qcow2ClusterMapping
            let bitmap: UInt64
            switch await l2Entry(l1Index: l1Index, l2Index: l2Index) {
            case .success(let (entry, bits)):
                mapping = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile)
                bitmap = bits
            case .failure(let error): return error.status
            }
            if extendedL2 {
                // The run of subclusters from here that read alike.
                guard let run = Qcow2SubclusterBitmap(bitmap).mapping(of: mapping, inCluster: inCluster, length: chunk,
                                                                      subclusterBits: metadata.subclusterBits) else { return .ioError }
                (mapping, chunk) = run
            }
            assert(chunk > 0 && chunk <= length - done && inCluster + chunk <= metadata.clusterSize, "a read step stays inside one cluster")
            switch mapping {
            case .normal(let hostCluster):
                let host = hostCluster + UInt64(inCluster)
                // Contiguous in the guest (no other kind of cluster in between) and in the file.
                if runLength > 0 && runStart + runLength == done && runHost + UInt64(runLength) == host {
                    runLength += chunk
                } else {
                    if runLength > 0 {
                        let status = await readData(into: base + runStart, length: runLength, at: runHost)
                        guard status.isOK else { return status }
                    }
                    (runHost, runStart, runLength) = (host, done, chunk)
                }
            case .zero:
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
            case .unallocated:
                let status = await readBacking(into: base + done, length: chunk, at: guestOffset)
                guard status.isOK else { return status }
            case .compressed(let hostOffset, let compressedBytes):
                let status = await readCompressed(into: base + done, length: chunk, inCluster: inCluster,
                                                  hostOffset: hostOffset, compressedBytes: compressedBytes)
                guard status.isOK else { return status }
            case .corrupt:
                return .ioError
            }
            done += chunk
        }
        if runLength > 0 { return await readData(into: base + runStart, length: runLength, at: runHost) }
        return .ok
    }

    /// Splices a range whose clusters are all plain data clusters from the data file into the
    /// caller's pipe, one request per run contiguous in the file. Anything else (zero, compressed,
    /// unallocated or subclustered clusters) answers ENOTSUP before a byte moves; a range that
    /// changed under the splice answers EAGAIN (the pipe holds part of it).
    func spliceRead(_ request: BlockRequest) async -> IOStatus {
        guard !extendedL2 else { return .notSupported }
        for pass in 0..<2 {
            var runHost: UInt64 = 0
            var runLength = 0
            var done = 0
            var moved = 0
            while done <= request.lengthBytes {
                var host: UInt64 = 0
                var chunk = 0
                if done < request.lengthBytes {
                    let (l1Index, l2Index, inCluster) = metadata.locate(request.offsetBytes + UInt64(done))
                    chunk = min(request.lengthBytes - done, metadata.clusterSize - inCluster)
                    guard case .success(let (entry, _)) = await l2Entry(l1Index: l1Index, l2Index: l2Index),
                          case .normal(let hostCluster) = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile)
                    else { return pass == 0 || moved == 0 ? .notSupported : IOStatus(errno: EAGAIN) }
                    host = hostCluster + UInt64(inCluster)
                    if runLength > 0 && runHost + UInt64(runLength) == host {
                        runLength += chunk
                        done += chunk
                        continue
                    }
                }
                if pass == 1 && runLength > 0 {
                    var part = request
                    part.offsetBytes = runHost
                    part.lengthBytes = runLength
                    let status = await dataIO.file.submit(part)
                    guard status.isOK else { return moved == 0 || status != .notSupported ? status : IOStatus(errno: EAGAIN) }
                    moved += runLength
                }
                if done == request.lengthBytes { break }
                (runHost, runLength) = (host, chunk)
                done += chunk
            }
        }
        return .ok
    }

    /// The L2 entry for a guest cluster and its subcluster bitmap (0 without extended L2
    /// entries): (0, 0) (unallocated) when its L1 entry is empty, from the cache, or read from the
    /// file on a miss. With subclusters, bit 0 of the entry is reserved (no zero flag): dropped.
    func l2Entry(l1Index: Int, l2Index: Int) async -> Result<(UInt64, UInt64), Qcow2Failure> {
        let tableOffset = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
        if tableOffset == 0 { return .success((0, 0)) }
        // The slot this instance last found the table in: checked without a lock.
        let memo = Int(truncatingIfNeeded: tableOffset >> UInt64(metadata.clusterBits)) & (Self.slotMemoSize - 1)
        let slot = slotMemo[memo]
        if extendedL2 {
            // With subclusters, bit 0 of the entry is reserved (no zero flag): dropped.
            if slot >= 0, let (entry, bitmap) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * l2Index, slot: slot) {
                return .success((Qcow2ClusterMapping.extendedEntry(entry), bitmap))
            }
            if let (entry, bitmap, slot) = metadata.l2Cache.entryPair(tableOffset: tableOffset, index: 2 * l2Index) {
                slotMemo[memo] = slot
                return .success((Qcow2ClusterMapping.extendedEntry(entry), bitmap))
            }
        } else {
            if slot >= 0, let entry = metadata.l2Cache.entry(tableOffset: tableOffset, index: l2Index, slot: slot) { return .success((entry, 0)) }
            if let (entry, slot) = metadata.l2Cache.entry(tableOffset: tableOffset, index: l2Index) {
                slotMemo[memo] = slot
                return .success((entry, 0))
            }
        }
        let clusterSize = UInt64(metadata.clusterSize)
        let fileSizeBytes = fileState.current.sizeBytes
        // An L2 table must be a whole cluster inside the file and not the header: QEMU calls
        // anything else corruption.
        guard tableOffset % clusterSize == 0, tableOffset >= clusterSize, tableOffset <= fileSizeBytes,
              fileSizeBytes - tableOffset >= clusterSize else { return .failure(Qcow2Failure(status: .ioError)) }
        let buffer = clusterPool.take()
        defer { clusterPool.give(buffer) }
        let status = await readFile(into: buffer.base, length: metadata.clusterSize, at: tableOffset, event: .l2Load)
        guard status.isOK else { return .failure(Qcow2Failure(status: status)) }
        metadata.l2Cache.insert(tableOffset: tableOffset, from: buffer.base)
        let word = metadata.l2EntryWords * l2Index
        let entry = UInt64(bigEndian: buffer.base.loadUnaligned(fromByteOffset: word * 8, as: UInt64.self))
        guard extendedL2 else { return .success((entry, 0)) }
        return .success((Qcow2ClusterMapping.extendedEntry(entry),
                         UInt64(bigEndian: buffer.base.loadUnaligned(fromByteOffset: word * 8 + 8, as: UInt64.self))))
    }

    /// Metadata (L2 tables, compressed clusters) from the `file` child.
    func readFile(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64, event: DebugEvent) async -> IOStatus {
        await io.file.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                            buffer: IOBuffer(base: base, count: length), debugEvent: event))
    }

    /// Data clusters, from the data file when the image has one.
    func readData(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        await dataIO.file.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                                buffer: IOBuffer(base: base, count: length)))
    }

    /// Guest bytes no cluster of this image holds: the backing node's up to its end, zeros past it.
    func readBacking(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        let available = offset < backingSizeBytes ? Int(min(UInt64(length), backingSizeBytes - offset)) : 0
        if let backing, available > 0 {
            let status = await backing.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: available,
                                                                buffer: IOBuffer(base: base, count: available)))
            guard status.isOK else { return status }
        }
        if available < length || backing == nil {
            let start = backing == nil ? 0 : available
            (base + start).initializeMemory(as: UInt8.self, repeating: 0, count: length - start)
        }
        return .ok
    }
}
