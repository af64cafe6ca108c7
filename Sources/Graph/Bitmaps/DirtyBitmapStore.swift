/// A node that keeps persistent dirty bitmaps in its image (qcow2's bitmaps extension).
public protocol DirtyBitmapStore: NodeState {
    /// The bitmaps the image held when the node opened.
    var storedBitmaps: [DirtyBitmap] { get }
    /// Whether a new persistent bitmap could be stored, and why not.
    func refusalToStore(name: String, granularity: UInt64) -> String?
    /// The node's bitmaps from now on: the persistent ones are written into the image at close.
    func track(_ bitmaps: [DirtyBitmap])
}
