import StrataGraph
import StrataRuntime

/// What the whole-image edits (make-empty, resize) share: they run on the control executor
/// through a file instance of their own, holding the allocation lock, while no queue writes; the
/// node's in-memory view of the header is stale afterwards, so its session must close next.
extension Qcow2NodeState {
    /// Runs `body` under the allocation lock with a file child instance on `executor`, from a
    /// task that prefers it, so ring completions resume on its thread.
    func edit<Value: Sendable>(on executor: QueueExecutor, extendedL2Allowed: Bool = false,
                               _ body: @escaping @Sendable (Qcow2Allocator, Qcow2ChildIO) async throws(Qcow2Failure) -> Value) async throws -> Value {
        guard let allocator else { throw Qcow2EditError("Block node is read-only") }
        guard !allocator.refusesWrites, !metadata.header.isCorrupt else { throw Qcow2EditError("Image is corrupt; cannot be opened read/write") }
        // `unmap` and the L1 growth know standard 8-byte L2 entries and image-file clusters only.
        guard extendedL2Allowed || !metadata.extendedL2, !metadata.hasDataFile else {
            throw Qcow2EditError("not supported yet for images with extended L2 entries or an external data file")
        }
        let fileState = file.current
        let result = await Task(executorPreference: executor) { () async -> Result<Value, Qcow2Failure> in
            let queue = QueueContext(index: -1, executor: executor, clock: MonotonicClock())
            let io = Qcow2ChildIO(file: NodeHandle(fileState.makeInstance(queue: queue, children: [:])))
            await allocator.lock.lock()
            defer { allocator.lock.unlock() }
            do throws(Qcow2Failure) {
                return .success(try await body(allocator, io))
            } catch {
                return .failure(error)
            }
        }.value
        switch result {
        case .success(let value): return value
        case .failure(let failure):
            // A whole-image edit that failed part-way (a grown L1 table, a new size) may have
            // switched a header field on disk without memory knowing: write nothing more.
            allocator.fence()
            throw Qcow2EditError(failure.status.description)
        }
    }

    /// Runs `body` while no allocating write can run and the metadata caches are written back:
    /// for changes made to the image file from outside the node (a stream rewriting the backing
    /// file name in the header).
    public func whileAllocationLocked<Value: Sendable>(on executor: QueueExecutor,
                                                      _ body: @escaping @Sendable () async throws -> Value) async throws -> Value {
        try await edit(on: executor) { allocator, io throws(Qcow2Failure) in
            try await allocator.flush(io: io)
            do {
                return try await body()
            } catch {
                throw Qcow2Failure(status: .ioError)
            }
        }
    }

    /// Unmaps every cluster of the L2 tables covering `[start, end)` of the guest (entries become
    /// unallocated, QEMU's full discard) and queues their host clusters for freeing.
    static func unmap(_ allocator: Qcow2Allocator, from start: UInt64, to end: UInt64, io: Qcow2ChildIO) async throws(Qcow2Failure) {
        let metadata = allocator.metadata
        let clusterSize = UInt64(metadata.clusterSize)
        var cluster = start / clusterSize * clusterSize
        while cluster < end {
            let (l1Index, l2Index, _) = metadata.locate(cluster)
            let inTable = min(UInt64(metadata.l2Entries - l2Index), (end - cluster + clusterSize - 1) / clusterSize)
            defer { cluster += inTable * clusterSize }
            guard l1Index < metadata.l1.count, metadata.l1[l1Index] & Qcow2ClusterMapping.offsetMask != 0 else { continue }
            let table = try await allocator.writableTable(l1Index: l1Index, io: io)
            for index in l2Index..<l2Index + Int(inTable) {
                let old = try await allocator.tableWord(table, index: index, io: io)
                guard old != 0 else { continue }
                try await allocator.setTableWord(0, tableOffset: table, index: index, io: io)
                allocator.refcounts.releaseAfterFlush(allocator.referencedClusters(of: old))
            }
        }
    }

    /// Writes big-endian header fields and makes them durable.
    static func writeHeaderFields(_ fields: [(offset: UInt64, value: UInt64, bytes: Int)], io: Qcow2ChildIO) async throws(Qcow2Failure) {
        for field in fields {
            var bytes = [UInt8](repeating: 0, count: field.bytes)
            for index in 0..<field.bytes { bytes[index] = UInt8(truncatingIfNeeded: field.value >> UInt64(8 * (field.bytes - 1 - index))) }
            try await io.write(bytes: bytes, at: field.offset, event: .otherMetadata)
        }
        try await io.flush()
    }
}
