import Synchronization

/// Per-node statistics shared by all queues: requests served, flushes issued to the kernel and
/// bytes moved. Relaxed atomics: each value is exact, but values read together are not a snapshot.
public final class FileNodeCounters: Sendable {
    private let readCount = Atomic<UInt64>(0)
    private let writeCount = Atomic<UInt64>(0)
    private let flushCount = Atomic<UInt64>(0)
    private let discardCount = Atomic<UInt64>(0)
    private let zeroWriteCount = Atomic<UInt64>(0)
    private let bounceCount = Atomic<UInt64>(0)
    private let readBytes = Atomic<UInt64>(0)
    private let writtenBytes = Atomic<UInt64>(0)

    init() {}

    /// Completed read requests.
    public var reads: UInt64 { readCount.load(ordering: .relaxed) }
    /// Completed write requests (write-zeroes and discards are counted apart).
    public var writes: UInt64 { writeCount.load(ordering: .relaxed) }
    /// fdatasync calls issued to the kernel (flushes skipped as no-ops are not counted).
    public var flushes: UInt64 { flushCount.load(ordering: .relaxed) }
    /// Discards that reached the kernel.
    public var discards: UInt64 { discardCount.load(ordering: .relaxed) }
    /// Completed write-zeroes requests.
    public var zeroWrites: UInt64 { zeroWriteCount.load(ordering: .relaxed) }
    /// Reads and writes that went through an O_DIRECT bounce buffer.
    public var bouncedRequests: UInt64 { bounceCount.load(ordering: .relaxed) }
    public var bytesRead: UInt64 { readBytes.load(ordering: .relaxed) }
    public var bytesWritten: UInt64 { writtenBytes.load(ordering: .relaxed) }

    func recordRead(bytes: Int) {
        readCount.wrappingAdd(1, ordering: .relaxed)
        readBytes.wrappingAdd(UInt64(bytes), ordering: .relaxed)
    }

    func recordWrite(bytes: Int) {
        writeCount.wrappingAdd(1, ordering: .relaxed)
        writtenBytes.wrappingAdd(UInt64(bytes), ordering: .relaxed)
    }

    func recordFlush() { flushCount.wrappingAdd(1, ordering: .relaxed) }
    func recordDiscard() { discardCount.wrappingAdd(1, ordering: .relaxed) }
    func recordZeroWrite() { zeroWriteCount.wrappingAdd(1, ordering: .relaxed) }
    func recordBounce() { bounceCount.wrappingAdd(1, ordering: .relaxed) }
}
