/// The operation classes QEMU's BlockDeviceStats counts (BlockAcctType): write-zeroes counts as a
/// write and discard as an unmap, as a virtio-blk device accounts them.
public enum AccountedOperation: Int, Sendable, CaseIterable {
    case read
    case write
    case flush
    case unmap

    @inlinable public init(_ operation: BlockOperation) {
        switch operation {
        case .read, .spliceRead: self = .read
        case .write, .writeZeroes: self = .write
        case .flush: self = .flush
        case .discard: self = .unmap
        }
    }

    /// QEMU's field prefix: `rd_bytes`, `wr_operations`, `flush_total_time_ns`, `unmap_merged`.
    public var fieldPrefix: String {
        switch self {
        case .read: "rd"
        case .write: "wr"
        case .flush: "flush"
        case .unmap: "unmap"
        }
    }

    /// The classes `block-latency-histogram-set` keeps custom histograms for, as QEMU 7.2.
    public static let histogramClasses: [AccountedOperation] = [.read, .write, .flush]
}
