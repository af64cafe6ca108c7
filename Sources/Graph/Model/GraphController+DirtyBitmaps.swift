/// Dirty bitmaps on the control path. Every change the request path must see (a bitmap added,
/// removed, enabled, disabled, frozen for a backup) is followed by a barrier: each queue moves
/// to a version whose handles mark the new set, and writes of older versions are done before
/// the call returns, so a write is marked in the bitmaps of the version it completed on.
extension GraphController {
    public func dirtyBitmaps(of node: String) -> [DirtyBitmap] { dirtyBitmaps[node] ?? [] }

    /// Every node's bitmaps, for the monitor's queries.
    public var allDirtyBitmaps: [String: [DirtyBitmap]] { dirtyBitmaps }

    public func dirtyBitmap(node: String, name: String) -> DirtyBitmap? {
        dirtyBitmaps[node]?.first { $0.name == name }
    }

    public func addDirtyBitmap(_ bitmap: DirtyBitmap, to node: String) async throws(GraphError) {
        guard model.nodes[node] != nil else { throw .noSuchNode(node) }
        dirtyBitmaps[node, default: []].insert(bitmap, at: 0)
        await publishBitmaps(of: node)
    }

    public func removeDirtyBitmap(_ bitmap: DirtyBitmap, from node: String) async {
        dirtyBitmaps[node]?.removeAll { $0 === bitmap }
        if dirtyBitmaps[node]?.isEmpty == true { dirtyBitmaps[node] = nil }
        await publishBitmaps(of: node)
    }

    public func setRecording(_ bitmap: DirtyBitmap, _ recording: Bool, on node: String) async {
        bitmap.setRecording(recording)
        await publishBitmaps(of: node)
    }

    /// Freezes `bitmap` for a backup: returns the bits written so far, while writes are recorded
    /// apart until `thaw`, from the next graph version on: the backup's own transaction, which
    /// puts its filter in at the same instant. Nil when the bitmap is in use already.
    public func freeze(_ bitmap: DirtyBitmap) -> AtomicBitmap? { bitmap.freeze() }

    /// Ends a backup's freeze; `keeping` the frozen bits the bitmap should still hold.
    public func thaw(_ bitmap: DirtyBitmap, on node: String, keeping: AtomicBitmap?) async {
        bitmap.thaw(keeping: keeping)
        await publishBitmaps(of: node)
    }

    /// block-dirty-bitmap-clear: the bits written so far go, as one atomic exchange per word.
    /// Returns them, for a transaction's undo.
    @discardableResult
    public func clear(_ bitmap: DirtyBitmap) -> AtomicBitmap { bitmap.bits.takeAll() }

    public func restoreBits(_ bitmap: DirtyBitmap, _ bits: AtomicBitmap) { bitmap.bits.merge(bits) }

    /// Marks the bitmap in use (an export, a job): it can be neither changed nor removed meanwhile.
    public func addUser(of bitmap: DirtyBitmap) { bitmap.addUser() }
    public func removeUser(of bitmap: DirtyBitmap) { bitmap.removeUser() }

    /// After a resize: every bitmap of a node whose size changed covers the new size, keeping
    /// its bits (those past a shrunk end go). The new bits are marked from the next version on;
    /// the old ones are merged in once the writes that marked them are done.
    public func refitBitmaps() async {
        var refitted: [(DirtyBitmap, AtomicBitmap)] = []
        for (node, bitmaps) in dirtyBitmaps {
            guard let size = try? state(of: node).sizeBytes else { continue }
            for bitmap in bitmaps {
                if let old = bitmap.refit(to: size) { refitted.append((bitmap, old)) }
            }
        }
        guard !refitted.isEmpty else { return }
        await barrier()
        for (bitmap, old) in refitted { bitmap.bits.merge(old) }
    }

    private func publishBitmaps(of node: String) async {
        if let store = try? state(of: node) as? any DirtyBitmapStore { store.track(dirtyBitmaps[node] ?? []) }
        await barrier()
    }
}
