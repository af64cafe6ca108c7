import StrataRuntime

/// qemu-img commit's last step (bdrv_make_empty): the top image gives up every cluster, so reads
/// fall through to the backing file that now holds its data. QEMU either rebuilds the metadata
/// (make_completely_empty) or discards every cluster; the visible result is the same, and this
/// is the second: every L2 entry unallocated, the data clusters freed. Emptied L2 tables stay.
extension Qcow2NodeState {
    public func makeEmpty(executor: QueueExecutor) async throws {
        guard metadata.header.snapshotCount == 0 else { throw Qcow2EditError("Can't empty an image with internal snapshots") }
        let size = metadata.sizeBytes
        try await edit(on: executor) { allocator, io throws(Qcow2Failure) in
            try await Self.unmap(allocator, from: 0, to: size, io: io)
            try await allocator.flush(io: io)
        }
    }
}
