/// One `--export type=vhost-user-blk` (qemu-storage-daemon's BlockExportOptionsVhostUserBlk): the
/// node, the socket the front end connects to, and the device the guest sees.
public struct VhostUserBlkExportOptions: Sendable, Equatable {
    public var id: String
    public var nodeName: String
    /// addr.type=unix,addr.path=PATH: the socket this export listens on.
    public var socketPath: String
    public var writable: Bool
    /// num-queues: virtqueues the guest may use, each served on queue executor (i mod queues).
    public var queueCount: Int
    /// logical-block-size: the block size the guest sees; requests must be aligned to it.
    public var logicalBlockSize: Int
    /// x-tenant: the tag virtqueue 0's requests carry; virtqueue i's carry x-tenant + i (a
    /// scheduling policy's tenants, see design/lab.md).
    public var tenantTagBase: UInt32 = 0

    public static let maxQueues = 256

    public init(id: String, nodeName: String, socketPath: String, writable: Bool = false, queueCount: Int = 1,
                logicalBlockSize: Int = 512) {
        self.id = id
        self.nodeName = nodeName
        self.socketPath = socketPath
        self.writable = writable
        self.queueCount = queueCount
        self.logicalBlockSize = logicalBlockSize
    }

    /// What is wrong with the options, in QEMU's words where it has them; nil when they are fine.
    public var problem: String? {
        if !(1...Self.maxQueues).contains(queueCount) {
            return "Invalid num-queues \(queueCount): it must be between 1 and \(Self.maxQueues)"
        }
        if logicalBlockSize < 512 || logicalBlockSize > 32768 || logicalBlockSize & (logicalBlockSize - 1) != 0 {
            return "Parameter 'logical-block-size' must be a power of 2 between 512 and 32768, got \(logicalBlockSize)"
        }
        if socketPath.isEmpty { return "vhost-user-blk export \(id) needs addr.path" }
        return nil
    }
}
