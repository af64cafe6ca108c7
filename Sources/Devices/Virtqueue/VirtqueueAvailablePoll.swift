import StrataRuntime

/// A device queue's available ring as an idle poll source: work is waiting once the driver's
/// avail.idx moves past the position the device will consume next. A driver that runs the index
/// more than a queue ahead also counts as work: popping then finds the queue broken.
///
/// Why `@unchecked Sendable` is safe: `seenIndex` is written by the queue's device and read by
/// the executor's idle loop, both on the queue's one thread.
public final class VirtqueueAvailablePoll: IdlePollSource, @unchecked Sendable {
    private let queue: SplitVirtqueue
    /// The device's next available position, set before each poll.
    public var seenIndex: UInt16 = 0

    public init(queue: SplitVirtqueue) { self.queue = queue }

    public func hasWork() -> Bool { queue.loadAvailableIndexAcquire() != seenIndex }
}
