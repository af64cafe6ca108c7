import CStrataShim
import Glibc
import StrataGraph
import StrataRuntime
import Synchronization

/// A file node's state shared by all queues: one file descriptor (OFD locks belong to the open
/// file description, so every lock and every I/O uses this one), the size, the write-through
/// switch, flush bookkeeping, lock bytes and counters.
public final class FileNodeState: NodeState, ResizableNodeState {
    public let nodeName: String
    public let path: String
    /// Opened with O_DIRECT (cache.direct).
    public let direct: Bool
    /// Flushes are ignored (cache.no-flush, QEMU's cache=unsafe).
    public let noFlush: Bool
    public let readOnly: Bool
    /// Whether QEMU's OFD image locks are in use (locking=on, or auto on a host that has them).
    public let usesLocks: Bool
    public let counters = FileNodeCounters()
    /// O_DIRECT alignment of offsets and lengths (1 when buffered); other requests bounce.
    public var requestAlignment: Int { alignment.request }
    /// O_DIRECT alignment of memory addresses (1 when buffered).
    public var memoryAlignment: Int { alignment.memory }

    let fd: Int32
    let alignment: FileAlignment
    let unmapOnDiscard: Bool

    private let size: Atomic<UInt64>
    private let writeThroughEnabled: Atomic<Bool>
    /// Bumped after every completed data change; a flush skips when a completed flush started after
    /// the latest one (QEMU's write_gen/flushed_gen).
    private let writeGeneration = Atomic<UInt64>(0)
    private let flushedGeneration = Atomic<UInt64>(0)
    /// errno of a failed buffered fdatasync: after it the page cache may hold pages marked clean
    /// that never reached the disk, so every later flush fails (QEMU's page_cache_inconsistent).
    private let pageCacheError = Atomic<Int32>(0)
    private let heldLocks = Locked(FileLockBytes())
    private let closed = Atomic<Bool>(false)
    private let control: FileControlRing
    private let lockingOption: FileLocking

    private init(nodeName: String, configuration: FileNodeConfiguration, fd: Int32, sizeBytes: UInt64,
                 alignment: FileAlignment, usesLocks: Bool, controlExecutor: QueueExecutor) {
        self.nodeName = nodeName
        self.path = configuration.filename
        self.direct = configuration.cache.direct
        self.noFlush = configuration.cache.noFlush
        self.readOnly = configuration.readOnly
        self.usesLocks = usesLocks
        self.fd = fd
        self.alignment = alignment
        self.unmapOnDiscard = configuration.unmapOnDiscard
        self.size = Atomic(sizeBytes)
        self.writeThroughEnabled = Atomic(configuration.cache.writeThrough)
        self.control = FileControlRing(executor: controlExecutor)
        self.lockingOption = configuration.locking
    }

    deinit {
        if !closed.load(ordering: .acquiring) { Glibc.close(fd) }
    }

    /// Opens the file through the control executor's ring, then probes it (fstat, alignment, lock
    /// support: short calls on the control thread, never on a queue thread).
    static func open(name: String, configuration: FileNodeConfiguration, controlExecutor: QueueExecutor) async throws -> FileNodeState {
        let path = configuration.filename
        var flags = O_CLOEXEC | (configuration.readOnly ? O_RDONLY : O_RDWR)
        if configuration.cache.direct { flags |= strata_o_direct() }
        let fd = await FileControlRing(executor: controlExecutor).openFile(path: path, flags: flags)
        if fd < 0 {
            let error = -fd
            var reason = "Could not open '\(path)': \(String(cString: strerror(error)))"
            if error == EINVAL && configuration.cache.direct {
                reason += " (the file system may not support O_DIRECT; try cache.direct=off)"
            }
            throw GraphError.openFailed(node: name, reason: reason)
        }
        do {
            var info = stat()
            if fstat(fd, &info) != 0 {
                throw GraphError.openFailed(node: name, reason: "Could not stat file: \(String(cString: strerror(errno)))")
            }
            // QEMU's file driver refuses devices and directories (host_device serves devices).
            if info.st_mode & S_IFMT != S_IFREG {
                throw GraphError.openFailed(node: name, reason: "'file' driver requires '\(path)' to be a regular file")
            }
            let alignment = configuration.cache.direct ? FileAlignment.probe(fd: fd) : .buffered
            let usesLocks: Bool
            switch configuration.locking {
            case .off:
                usesLocks = false
            case .on, .auto:
                let supported = strata_ofd_probe(fd, FileLockBytes.permissionBase, Int32(F_WRLCK)) >= 0
                // QEMU falls back to POSIX locks here; those are dropped by any close of the file
                // in this process, so Strata refuses instead.
                if !supported && configuration.locking == .on {
                    throw GraphError.badOption(node: name, option: "locking", reason: "is 'on' but OFD locks are unavailable for '\(path)'")
                }
                usesLocks = supported
            }
            return FileNodeState(nodeName: name, configuration: configuration, fd: fd, sizeBytes: UInt64(info.st_size),
                                 alignment: alignment, usesLocks: usesLocks, controlExecutor: controlExecutor)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    // MARK: Size

    public var sizeBytes: UInt64 { size.load(ordering: .acquiring) }

    /// Sets the file's size with ftruncate, through the control executor's ring.
    public func resize(to newSizeBytes: UInt64) async throws {
        if readOnly { throw SystemError("resize '\(path)'", errno: EROFS) }
        if newSizeBytes > UInt64(Int64.max) { throw SystemError("resize '\(path)'", errno: EFBIG) }
        let result = await control.truncate(fd: fd, length: newSizeBytes)
        if result != 0 { throw SystemError("ftruncate '\(path)'", errno: -result) }
        size.store(newSizeBytes, ordering: .releasing)
    }

    /// Reads the file's size again after something else changed it (blockdev-create writing an
    /// image into the file through its own descriptor).
    public func refreshSize() throws {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemError("fstat '\(path)'", errno: errno) }
        size.store(UInt64(info.st_size), ordering: .releasing)
    }

    // MARK: Write-through (the guest's write cache enable bit)

    /// When on, every write and write-zeroes completes only after a flush that followed it completed.
    public var writeThrough: Bool { writeThroughEnabled.load(ordering: .relaxed) }

    /// Switches write-through at runtime; requests that start afterwards see the new value.
    public func setWriteThrough(_ enabled: Bool) {
        writeThroughEnabled.store(enabled, ordering: .relaxed)
    }

    /// blockdev-reopen: the write cache (write-through or write-back) changes on the open file, as
    /// QEMU's runtime WCE toggle; every other option names a different open and is refused.
    public func prepareReopen(_ configuration: any NodeConfiguration) throws(GraphError) -> (@Sendable () -> Void) {
        guard let new = configuration as? FileNodeConfiguration else { throw .badEdit("node '\(nodeName)': reopen needs 'file' options") }
        let unchanged = new.filename == path && new.cache.direct == direct && new.cache.noFlush == noFlush
            && new.readOnly == readOnly && new.unmapOnDiscard == unmapOnDiscard && new.locking == lockingOption
        guard unchanged else {
            throw .badEdit("node '\(nodeName)': reopen can change only the write cache (writeback or writethrough); filename, cache.direct, cache.no-flush, read-only, discard and locking stay as opened")
        }
        let writeThrough = new.cache.writeThrough
        return { [self] in setWriteThrough(writeThrough) }
    }

    // MARK: Bookkeeping for the per-queue instances

    /// Records a completed data change ending at `endBytes` (0 when it cannot grow the file).
    func noteDataChanged(endBytes: UInt64) {
        var current = size.load(ordering: .relaxed)
        while endBytes > current {
            let (exchanged, original) = size.compareExchange(expected: current, desired: endBytes, ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
        writeGeneration.wrappingAdd(1, ordering: .releasing)
    }

    /// The write generation a flush starting now covers, or nil when a completed flush already covers it.
    func flushTarget() -> UInt64? {
        let generation = writeGeneration.load(ordering: .acquiring)
        return generation == flushedGeneration.load(ordering: .acquiring) ? nil : generation
    }

    func noteFlushCompleted(generation: UInt64) {
        var current = flushedGeneration.load(ordering: .relaxed)
        while generation > current {
            let (exchanged, original) = flushedGeneration.compareExchange(expected: current, desired: generation, ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
    }

    var pageCacheErrno: Int32 { pageCacheError.load(ordering: .acquiring) }

    func notePageCacheInconsistent(errno: Int32) {
        _ = pageCacheError.compareExchange(expected: 0, desired: errno, ordering: .acquiringAndReleasing)
    }

    // MARK: NodeState

    public func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        FileNodeInstance(state: self, queue: queue)
    }

    /// Moves this node's QEMU lock bytes to the new cumulative permissions. Throws FileLockError
    /// when another process's locks conflict, leaving the previous locks in place.
    public func applyPermissions(take: Permissions, share: Permissions) async throws {
        guard usesLocks else { return }
        try heldLocks.withLock { (held: inout FileLockBytes) throws(FileLockError) in
            try held.apply(fd: fd, take: take, share: share, node: nodeName, path: path)
        }
    }

    /// The permissions whose lock bytes this node holds now: taken (bytes 100+i) and not shared (200+i).
    public var lockedPermissions: (taken: Permissions, unshared: Permissions) {
        heldLocks.withLock { ($0.permissions, $0.unshared) }
    }

    /// Closes the descriptor, which drops every lock. Call once no queue can reach the node.
    public func close() async {
        if !closed.exchange(true, ordering: .acquiringAndReleasing) { Glibc.close(fd) }
    }
}
