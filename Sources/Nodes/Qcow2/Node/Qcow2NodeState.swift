import StrataGraph
import StrataRuntime
import Synchronization

/// A qcow2 node's shared state: its metadata (header, L1 table, L2 cache), the allocator through
/// which writable nodes change it, and its children. Public for what the image reports (version,
/// flags, backing file), as QEMU's query-block does.
public final class Qcow2NodeState: NodeState, DirtyBitmapStore {
    let configuration: Qcow2NodeConfiguration
    let metadata: Qcow2Metadata
    /// Nil for a read-only node.
    let allocator: Qcow2Allocator?
    let file: ChildStateReference
    let dataFile: ChildStateReference?
    /// The backing child now, by its name in the graph: a relink may point it at another node
    /// (a stream's new base) or take it away (a stream of the whole chain).
    private let backingChild: Locked<(nodeName: String, state: any NodeState)?>
    /// The file child's instance on the control executor: reads metadata at open, writes it back
    /// at close.
    let controlIO: Qcow2OpenReader
    /// The data file child's instance on the control executor: flushed before the metadata at close.
    let dataControl: Qcow2OpenReader?
    /// The persistent bitmaps as the image held them at open (their clusters are freed once
    /// close has written the new ones), and the node's bitmaps now.
    let storedEntries: [Qcow2Bitmap]
    public let storedBitmaps: [DirtyBitmap]
    private let trackedBitmaps: Locked<[DirtyBitmap]>
    /// A graph controller tracks this node's bitmaps: its writes mark them.
    private let bitmapsTracked = Atomic<Bool>(false)

    init(configuration: Qcow2NodeConfiguration, metadata: Qcow2Metadata, allocator: Qcow2Allocator?,
         controlIO: Qcow2OpenReader, dataControl: Qcow2OpenReader?, file: any NodeState, dataFile: (any NodeState)?,
         backing: (any NodeState)?, storedEntries: [Qcow2Bitmap] = [], storedBitmaps: [DirtyBitmap] = []) {
        self.configuration = configuration
        self.storedEntries = storedEntries
        self.storedBitmaps = storedBitmaps
        trackedBitmaps = Locked(storedBitmaps)
        self.metadata = metadata
        self.allocator = allocator
        self.controlIO = controlIO
        self.dataControl = dataControl
        self.file = ChildStateReference(file)
        self.dataFile = dataFile.map { ChildStateReference($0) }
        backingChild = Locked(zip2(configuration.backing?.nodeName, backing))
    }

    /// The backing child's name and state, nil without one.
    var backing: (nodeName: String, state: any NodeState)? { backingChild.withLock { $0 } }

    /// The virtual size from the header.
    public var sizeBytes: UInt64 { metadata.sizeBytes }

    /// 2 (compat=0.10) or 3 (compat=1.1).
    public var version: UInt32 { metadata.header.version }
    public var clusterSize: Int { metadata.clusterSize }
    /// The image was not closed cleanly (refcounts may be stale; reads do not use them).
    public var isDirty: Bool { metadata.header.isDirty }
    /// QEMU found the metadata inconsistent, or a write of this node would have overwritten
    /// metadata; such an image may only be read.
    public var isCorrupt: Bool { metadata.header.isCorrupt || (allocator?.isCorrupt ?? false) }
    /// The backing file and format the image names (the node reads the `backing` child instead).
    public var backingFileName: String? { metadata.header.backingFileName }
    public var backingFormat: String? { metadata.header.backingFormat }
    /// L2 tables the shared cache holds at most.
    public var l2CacheTables: Int { metadata.l2Cache.capacity }
    /// Refcount blocks the refcount cache holds at most (0 for a read-only node).
    public var refcountCacheBlocks: Int { allocator?.refcounts.cache.capacity ?? 0 }

    public func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let fileNode = children.child(configuration.file.optionKey) else {
            preconditionFailure("qcow2 instance built without its 'file' child")
        }
        let backingNode = configuration.backing.flatMap { children.child($0.optionKey) }
        let dataNode = configuration.dataFile.flatMap { children.child($0.optionKey) }
        // The backing size is read once here, not per request: every relink builds new instances.
        return Qcow2NodeInstance(metadata: metadata, allocator: allocator, file: fileNode, fileState: file,
                                 dataFile: dataNode, backing: backingNode, backingSizeBytes: backing?.state.sizeBytes ?? 0, queue: queue)
    }

    public func track(_ bitmaps: [DirtyBitmap]) {
        trackedBitmaps.withLock { $0 = bitmaps }
        bitmapsTracked.store(true, ordering: .releasing)
    }

    public func refusalToStore(name: String, granularity: UInt64) -> String? {
        if allocator == nil { return "Cannot store bitmaps in a read-only node" }
        if version < 3 { return "Cannot store dirty bitmaps in qcow2 v2 files" }
        if granularity > UInt64(1) << Qcow2BitmapImage.granularityBits.upperBound {
            return "Granularity exceeds maximum (\(UInt64(1) << Qcow2BitmapImage.granularityBits.upperBound) bytes)"
        }
        let count = trackedBitmaps.withLock { $0.filter(\.isPersistent).count }
        if count >= Int(Qcow2Bitmap.maxBitmaps) { return "Maximum number of persistent bitmaps is already reached" }
        return nil
    }

    public func relink(children: [ChildLink: any NodeState]) {
        if let state = children.child(configuration.file.optionKey) { file.replace(with: state) }
        if let link = configuration.backing {
            let now = children.first { $0.key.optionKey == link.optionKey }
            backingChild.withLock { $0 = now.map { ($0.key.nodeName, $0.value) } }
        }
        if let link = configuration.dataFile, let state = children.child(link.optionKey) { dataFile?.replace(with: state) }
    }

    /// Writes back what the caches hold, so the image is complete and consistent on disk, and
    /// gives back the zeroed space the allocator extended the file by beyond the last cluster.
    public func close() async {
        guard let allocator, !allocator.refusesWrites else { return }
        // Data before the metadata that maps it.
        if let dataControl, (try? await dataControl.flush()) == nil { return }
        do {
            try await controlIO.flush(allocator)
        } catch {
            return
        }
        // The persistent bitmaps as they are now replace the ones the image held; as QEMU's
        // qcow2_store_persistent_dirty_bitmaps, those it held keep their places in the directory
        // and new ones follow, newest first.
        let persistent = trackedBitmaps.withLock { $0 }.filter(\.isPersistent)
        if !bitmapsTracked.load(ordering: .acquiring) && metadata.guestChanged.load(ordering: .relaxed) {
            for bitmap in persistent { bitmap.markInconsistent() }
        }
        if !persistent.isEmpty || !storedEntries.isEmpty || allocator.bitmapDirectory != nil {
            let kept = storedEntries.compactMap { entry in persistent.first { $0.name == entry.name } }
            let added = persistent.filter { bitmap in !kept.contains { $0 === bitmap } }
            try? await controlIO.storeBitmaps(allocator, kept + added, old: storedEntries)
        }
        let end = allocator.refcounts.endCluster << UInt64(metadata.clusterBits)
        if allocator.zeroExtendedTo > end, let fileState = file.current as? FileNodeState, fileState.sizeBytes > end {
            try? await fileState.resize(to: end)
        }
    }
}

private func zip2<A, B>(_ first: A?, _ second: B?) -> (A, B)? {
    guard let first, let second else { return nil }
    return (first, second)
}
