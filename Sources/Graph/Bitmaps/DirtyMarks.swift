/// The bitmaps a node's writes mark on one graph version: fixed when the version is built, so
/// the request path reads them without a lock (a bitmap added, enabled, disabled or frozen takes
/// effect with the next version, and `GraphController` waits out the older one).
public final class DirtyMarks: Sendable {
    public let bitmaps: [AtomicBitmap]

    public init?(_ bitmaps: [AtomicBitmap]) {
        guard !bitmaps.isEmpty else { return nil }
        self.bitmaps = bitmaps
    }

    /// Marks what a write, write-zeroes or discard touched, whether it succeeded or not (as
    /// QEMU's bdrv_co_write_req_finish: a failed write may have changed the range).
    @inlinable public func record(_ request: BlockRequest) {
        guard request.operation.isWrite else { return }
        for bitmap in bitmaps { bitmap.mark(offsetBytes: request.offsetBytes, lengthBytes: UInt64(max(0, request.lengthBytes))) }
    }
}
