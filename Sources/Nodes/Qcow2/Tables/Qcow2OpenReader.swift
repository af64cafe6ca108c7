import StrataGraph
import StrataRuntime

/// Reads a qcow2 image's metadata at open, and writes it back at close: an instance of the `file`
/// child built for the control executor (not a queue), awaited from this actor so the child's ring
/// work runs on that executor's thread. Going through the child node rather than a file descriptor keeps the
/// format independent of which protocol node is below it.
actor Qcow2OpenReader {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let child: NodeHandle
    private let childState: any NodeState
    private let nodeName: String

    /// Nil when `childState` cannot be instantiated alone: it is neither a protocol node nor a
    /// one-child filter over one.
    init?(childState: any NodeState, context: OpenContext, nodeName: String) {
        let queue = QueueContext(index: -1, executor: context.controlExecutor, clock: context.clock)
        guard let child = Self.controlInstance(of: childState, queue: queue) else { return nil }
        self.child = child
        self.childState = childState
        unownedExecutor = context.controlExecutor.asUnownedSerialExecutor()
        self.nodeName = nodeName
    }

    private static func controlInstance(of state: any NodeState, queue: QueueContext) -> NodeHandle? {
        if state is any LeafNodeState { return NodeHandle(state.makeInstance(queue: queue, children: [:])) }
        guard let filter = state as? any SingleChildFilterState,
              let below = controlInstance(of: filter.filteredChildState, queue: queue) else { return nil }
        return NodeHandle(state.makeInstance(queue: queue, children: [filter.filteredLink: below]))
    }

    /// `count` bytes at `offset` of the child; bytes past the child's end read as zeros.
    func read(offset: UInt64, count: Int, what: String, event: DebugEvent = .otherMetadata) async throws(GraphError) -> [UInt8] {
        guard count > 0 else { return [] }
        // Page-aligned, so an O_DIRECT child needs no bounce for aligned offsets.
        let memory = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
        defer { memory.deallocate() }
        let request = BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: count, buffer: IOBuffer(base: memory, count: count),
                                   debugEvent: event)
        let status = await child.submit(request)
        guard status.isOK else {
            throw .openFailed(node: nodeName, reason: "qcow2: could not read the \(what) at offset \(offset): \(status)")
        }
        return Array(UnsafeRawBufferPointer(start: memory, count: count))
    }

    /// Writes `bytes` at `offset` and flushes: header updates at open.
    func writeDurably(_ bytes: [UInt8], at offset: UInt64) async throws(Qcow2Failure) {
        let io = Qcow2ChildIO(file: child)
        try await io.write(bytes: bytes, at: offset, event: .otherMetadata)
        try await io.flush()
    }

    /// Runs a snapshot operation of the node's allocator from the control executor.
    func snapshotOperation(_ allocator: Qcow2Allocator, _ operation: Qcow2SnapshotOperation) async throws(Qcow2Failure) -> Qcow2Snapshot {
        await allocator.lock.lock()
        defer { allocator.lock.unlock() }
        let io = Qcow2ChildIO(file: child)
        switch operation {
        case .create(let name): return try await allocator.createSnapshot(name: name, io: io)
        case .apply(let key): return try await allocator.applySnapshot(key, io: io)
        case .delete(let key): return try await allocator.deleteSnapshot(key, io: io)
        }
    }

    /// Writes the node's persistent bitmaps into the image, replacing the ones it held (at close).
    func storeBitmaps(_ allocator: Qcow2Allocator, _ bitmaps: [DirtyBitmap], old: [Qcow2Bitmap]) async throws(Qcow2Failure) {
        await allocator.lock.lock()
        defer { allocator.lock.unlock() }
        let io = Qcow2ChildIO(file: child)
        try await allocator.flush(io: io)
        let oldDirectory = allocator.bitmapDirectory.map { (offset: $0.offset, bytes: UInt64($0.bytes.count)) }
        try await allocator.storeBitmaps(bitmaps, old: old, oldDirectory: oldDirectory, io: io)
        allocator.bitmapDirectory = nil
    }

    /// Sets the corrupt bit after an operation found overlapping metadata.
    func markCorrupt(_ allocator: Qcow2Allocator) async {
        await allocator.markCorrupt(io: Qcow2ChildIO(file: child))
    }

    /// Writes back the node's metadata from the control executor (at close).
    func flush(_ allocator: Qcow2Allocator) async throws(Qcow2Failure) {
        await allocator.lock.lock()
        defer { allocator.lock.unlock() }
        try await allocator.flush(io: Qcow2ChildIO(file: child))
    }
}

extension Qcow2OpenReader {
    /// Word `index` of the L2 table at `tableOffset` (an entry, or an extended entry's bitmap), from the node's cache or read through the
    /// child (and cached) on a miss: for control-path queries such as block status.
    func l2Entry(_ metadata: Qcow2Metadata, tableOffset: UInt64, index: Int) async throws(Qcow2Failure) -> UInt64 {
        if let entry = metadata.l2Cache.entry(tableOffset: tableOffset, index: index)?.word { return entry }
        let clusterSize = UInt64(metadata.clusterSize)
        guard tableOffset % clusterSize == 0, tableOffset >= clusterSize else { throw .corrupt }
        let table: [UInt8]
        do {
            table = try await read(offset: tableOffset, count: metadata.clusterSize, what: "L2 table", event: .l2Load)
        } catch {
            throw Qcow2Failure(status: .ioError)
        }
        table.withUnsafeBytes { _ = metadata.l2Cache.insert(tableOffset: tableOffset, from: $0.baseAddress!) }
        return table.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
    }
}

/// The open-time refcount repair of a dirty image runs the offline checker through the child.
extension Qcow2OpenReader: Qcow2ImageIO {
    func sizeBytes() async throws -> UInt64 { childState.sizeBytes }

    func read(offset: UInt64, count: Int) async throws -> [UInt8] {
        try await read(offset: offset, count: count, what: "metadata")
    }

    func write(offset: UInt64, bytes: [UInt8]) async throws {
        try await Qcow2ChildIO(file: child).write(bytes: bytes, at: offset, event: .otherMetadata)
    }

    func flush() async throws {
        try await Qcow2ChildIO(file: child).flush()
    }

    func truncate(to sizeBytes: UInt64) async throws {
        throw Qcow2Failure(status: .notSupported)
    }
}
