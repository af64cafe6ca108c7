import Glibc
import StrataGraph
import StrataRuntime

/// A qcow2 node on one queue. A request is split per guest cluster and mapped through L1 and L2.
/// Reads: runs of contiguous normal clusters become one read of the file child, zero clusters are
/// zero-filled, unallocated ones come from the backing node (zeros past its end, or without one),
/// compressed ones are read and inflated. Writes to clusters this image owns (COPIED) go straight
/// to the file, without a lock; writes that need clusters allocated take the node's allocation
/// lock and go through `Qcow2Allocator`, merging the copy-on-write of partial clusters into the
/// data write. The buffers for a table miss, a copy-on-write and compressed data belong to the
/// instance, so reads and overwrites of allocated clusters allocate nothing.
///
/// Images with extended L2 entries map each cluster's 32 subclusters separately (see
/// Qcow2NodeInstance+Subclusters.swift); images with an external data file keep data clusters in
/// the `data-file` child at the host offsets the L2 entries name, metadata in `file`.
actor Qcow2NodeInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let executor: QueueExecutor
    let metadata: Qcow2Metadata
    /// Nil when the node is read-only.
    let allocator: Qcow2Allocator?
    /// Metadata I/O on the `file` child (it flushes the data file before metadata write-back).
    let io: Qcow2ChildIO
    /// Data cluster I/O: the `data-file` child, or `file` without one.
    let dataIO: Qcow2ChildIO
    let fileState: ChildStateReference
    let backing: NodeHandle?
    let backingSizeBytes: UInt64
    /// Copied from the metadata so the per-request checks are plain loads.
    let extendedL2: Bool
    let hasDataFile: Bool
    /// The data file must stay a raw image of the guest: zeroes and discards reach it too.
    let rawDataFile: Bool
    /// Cluster-sized buffers for L2 tables read on a miss and for copy-on-write. Requests
    /// interleave on this actor while one waits for the file, so each borrows its own buffer.
    let clusterPool: BounceBufferPool
    /// Made on the first compressed cluster: 2 clusters of compressed input (the most an L2 entry
    /// can describe), then one of output.
    var compressedPool: BounceBufferPool?
    var decompressor: Qcow2Decompressor?
    var compressor: Qcow2Compressor?
    /// Where this instance last found L2 tables in the shared cache, by table (direct-mapped),
    /// so that lookups of hot tables take no lock.
    var slotMemo = [Int](repeating: -1, count: slotMemoSize)
    static let slotMemoSize = 64
    /// Arrays for the old L2 entries an allocating write replaces, reused so that allocating
    /// writes do not allocate them each time.
    var replacedPool: [[UInt64]] = []
    var zstdDecompressor: Qcow2ZstdDecompressor?
    var zstdCompressor: Qcow2ZstdCompressor?

    init(metadata: Qcow2Metadata, allocator: Qcow2Allocator?, file: NodeHandle, fileState: ChildStateReference,
         dataFile: NodeHandle?, backing: NodeHandle?, backingSizeBytes: UInt64, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.executor = queue.executor
        self.metadata = metadata
        self.allocator = allocator
        self.io = Qcow2ChildIO(file: file, dataFile: dataFile)
        self.dataIO = Qcow2ChildIO(file: dataFile ?? file)
        extendedL2 = metadata.extendedL2
        hasDataFile = metadata.hasDataFile
        rawDataFile = metadata.header.hasRawDataFile
        self.fileState = fileState
        self.backing = backing
        self.backingSizeBytes = backingSizeBytes
        clusterPool = BounceBufferPool(count: 4, bufferSize: metadata.clusterSize, alignment: 4096, numaNode: queue.executor.numaNode)
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        await serve(request)
    }

    private func serve(_ request: BlockRequest) async -> IOStatus {
        if request.operation == .flush { return await flush() }
        let status = request.rangeStatus(sizeBytes: metadata.sizeBytes)
        guard status.isOK, request.lengthBytes > 0 else { return status }
        if request.operation.isWrite && !metadata.guestChanged.load(ordering: .relaxed) {
            metadata.guestChanged.store(true, ordering: .relaxed)
        }
        switch request.operation {
        case .read:
            guard let base = request.buffer.base else { return .invalid }
            return await read(into: base, length: request.lengthBytes, at: request.offsetBytes)
        case .write:
            guard let base = request.buffer.base else { return .invalid }
            guard allocator != nil else { return .readOnly }
            if request.flags.contains(.compressed) {
                return await compressedWrites(from: UnsafeRawPointer(base), length: request.lengthBytes, at: request.offsetBytes)
            }
            return await write(from: UnsafeRawPointer(base), length: request.lengthBytes, at: request.offsetBytes,
                               fua: request.flags.contains(.fua))
        case .writeZeroes, .discard:
            guard allocator != nil else { return .readOnly }
            return await zeroOrDiscard(request)
        case .flush:
            return .ok
        case .spliceRead:
            return await spliceRead(request)
        }
    }

    private func flush() async -> IOStatus {
        if let allocator {
            await allocator.lock.lock()
            defer { allocator.lock.unlock() }
            do {
                try await allocator.flush(io: io)
            } catch {
                return error.status
            }
        } else {
            let status = await io.file.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
            guard status.isOK else { return status }
        }
        guard let backing else { return .ok }
        return await backing.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
    }
}
