import StrataGraph
import StrataRuntime

/// A qcow2 node on one queue. A read is split per guest cluster and mapped through L1 and L2:
/// runs of contiguous normal clusters become one read of the file child, zero clusters are
/// zero-filled, unallocated ones come from the backing node (zeros past its end, or without one),
/// and compressed ones are read and inflated. L2 tables come from the node's shared cache; the
/// buffers for a miss and for compressed data belong to the instance, so a read of normal
/// clusters allocates nothing.
actor Qcow2NodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let executor: QueueExecutor
    private let metadata: Qcow2Metadata
    private let file: NodeHandle
    private let fileSizeBytes: UInt64
    private let backing: NodeHandle?
    private let backingSizeBytes: UInt64
    /// Cluster-sized buffers for L2 tables read on a cache miss. Requests interleave on this actor
    /// while one waits for the file, so each borrows its own buffer for the duration.
    private let tablePool: BounceBufferPool
    /// Made on the first compressed cluster: 2 clusters of compressed input (the most an L2 entry
    /// can describe), then one of output.
    private var compressedPool: BounceBufferPool?
    private var decompressor: Qcow2Decompressor?

    init(metadata: Qcow2Metadata, file: any BlockNode, fileSizeBytes: UInt64, backing: (any BlockNode)?,
         backingSizeBytes: UInt64, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.executor = queue.executor
        self.metadata = metadata
        self.file = NodeHandle(file)
        self.fileSizeBytes = fileSizeBytes
        self.backing = backing.map { NodeHandle($0) }
        self.backingSizeBytes = backingSizeBytes
        tablePool = BounceBufferPool(count: 2, bufferSize: metadata.clusterSize, alignment: 4096, numaNode: queue.executor.numaNode)
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        await serve(request)
    }

    private func serve(_ request: BlockRequest) async -> IOStatus {
        switch request.operation {
        case .flush:
            let status = await file.node.submit(request)
            guard status.isOK, let backing else { return status }
            return await backing.node.submit(request)
        case .write, .writeZeroes, .discard:
            return .readOnly
        case .read:
            let status = request.rangeStatus(sizeBytes: metadata.header.sizeBytes)
            guard status.isOK, request.lengthBytes > 0, let base = request.buffer.base else { return status }
            return await read(into: base, length: request.lengthBytes, at: request.offsetBytes)
        }
    }

    // MARK: Read

    private func read(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        // A run of normal clusters that are contiguous in the file too, not read yet.
        var runHost: UInt64 = 0
        var runStart = 0
        var runLength = 0
        var done = 0
        while done < length {
            let guestOffset = offset + UInt64(done)
            let (l1Index, l2Index, inCluster) = metadata.locate(guestOffset)
            let chunk = min(length - done, metadata.clusterSize - inCluster)
            let mapping: Qcow2ClusterMapping
            switch await l2Entry(l1Index: l1Index, l2Index: l2Index) {
            case .success(let entry): mapping = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits)
            case .failure(let error): return error.status
            }
            switch mapping {
            case .normal(let hostCluster):
                let host = hostCluster + UInt64(inCluster)
                // Contiguous in the guest (no other kind of cluster in between) and in the file.
                if runLength > 0 && runStart + runLength == done && runHost + UInt64(runLength) == host {
                    runLength += chunk
                } else {
                    if runLength > 0 {
                        let status = await readFile(into: base + runStart, length: runLength, at: runHost)
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
        if runLength > 0 { return await readFile(into: base + runStart, length: runLength, at: runHost) }
        return .ok
    }

    /// Why a mapping lookup failed, as the status the request returns.
    private struct LookupError: Error {
        let status: IOStatus
    }

    /// The L2 entry for a guest cluster: 0 (unallocated) when its L1 entry is empty, from the
    /// cache, or read from the file on a miss.
    private func l2Entry(l1Index: Int, l2Index: Int) async -> Result<UInt64, LookupError> {
        let tableOffset = metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask
        if tableOffset == 0 { return .success(0) }
        if let entry = metadata.l2Cache.entry(tableOffset: tableOffset, index: l2Index) { return .success(entry) }
        let clusterSize = UInt64(metadata.clusterSize)
        // An L2 table must be a whole cluster inside the file and not the header: QEMU calls
        // anything else corruption.
        guard tableOffset % clusterSize == 0, tableOffset >= clusterSize, tableOffset <= fileSizeBytes,
              fileSizeBytes - tableOffset >= clusterSize else { return .failure(LookupError(status: .ioError)) }
        let buffer = tablePool.take()
        defer { tablePool.give(buffer) }
        let status = await readFile(into: buffer.base, length: metadata.clusterSize, at: tableOffset)
        guard status.isOK else { return .failure(LookupError(status: status)) }
        metadata.l2Cache.insert(tableOffset: tableOffset, table: buffer.base)
        return .success(UInt64(bigEndian: buffer.base.loadUnaligned(fromByteOffset: l2Index * 8, as: UInt64.self)))
    }

    private func readFile(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        await file.node.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                            buffer: IOBuffer(base: base, count: length)))
    }

    /// Guest bytes no cluster of this image holds: the backing node's up to its end, zeros past it.
    private func readBacking(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64) async -> IOStatus {
        let available = offset < backingSizeBytes ? Int(min(UInt64(length), backingSizeBytes - offset)) : 0
        if let backing, available > 0 {
            let status = await backing.node.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: available,
                                                                buffer: IOBuffer(base: base, count: available)))
            guard status.isOK else { return status }
        }
        if available < length || backing == nil {
            let start = backing == nil ? 0 : available
            (base + start).initializeMemory(as: UInt8.self, repeating: 0, count: length - start)
        }
        return .ok
    }

    /// Reads a compressed cluster's deflate data (clipped at the end of the file, the rest zero,
    /// as QEMU reads it) and inflates the whole cluster, then copies out the requested part.
    private func readCompressed(into base: UnsafeMutableRawPointer, length: Int, inCluster: Int,
                                hostOffset: UInt64, compressedBytes: Int) async -> IOStatus {
        let clusterSize = metadata.clusterSize
        guard hostOffset >= UInt64(clusterSize), hostOffset < fileSizeBytes, compressedBytes <= 2 * clusterSize else { return .ioError }
        if decompressor == nil { decompressor = Qcow2Decompressor() }
        guard let decompressor else { return .ioError }
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
        let status = await readFile(into: buffer.base, length: inputCount, at: hostOffset)
        guard status.isOK else { return status }
        let output = buffer.base + 2 * clusterSize
        guard decompressor.inflate(input: buffer.base, inputCount: inputCount, output: output, outputCount: clusterSize) else {
            return .ioError
        }
        base.copyMemory(from: output + inCluster, byteCount: length)
        return .ok
    }
}
