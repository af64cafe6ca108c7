/// How a command-line tool opens an image, with qemu-img's and qemu-io's switches:
/// `-f` (format, probed when nil), `-r` (read-only), `-U` (force share: take no image locks),
/// `-t`/`-n` (cache mode), `-C` (copy-on-read), and how many queues serve it.
public struct ImageOpenOptions: Sendable {
    public var format: String?
    public var readOnly: Bool
    public var forceShare: Bool
    /// A QEMU cache mode name: none, writeback, writethrough, directsync, unsafe.
    public var cacheMode: String
    public var queueCount: Int
    /// Open the backing files a qcow2 image names (qemu-img's default; off is its -u).
    public var openBackingChain: Bool
    /// Copy data read from the backing chain into the top image (qemu-io -C).
    public var copyOnRead: Bool
    /// Discards reach the file (`discard=unmap`): qemu-io opens images so (BDRV_O_UNMAP).
    public var unmap = false

    public static let cacheModes = ["none", "writeback", "writethrough", "directsync", "unsafe"]

    public init(format: String? = nil, readOnly: Bool = false, forceShare: Bool = false, cacheMode: String = "writeback",
                queueCount: Int = 1, openBackingChain: Bool = true, copyOnRead: Bool = false) {
        self.format = format
        self.readOnly = readOnly
        self.forceShare = forceShare
        self.cacheMode = cacheMode
        self.queueCount = queueCount
        self.openBackingChain = openBackingChain
        self.copyOnRead = copyOnRead
    }
}
