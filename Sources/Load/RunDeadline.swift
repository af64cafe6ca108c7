import Synchronization

/// When a timed run ends, on the cycle clock, shared by its queues. The control side may push it
/// back so that an edit scheduled within the run is applied while the queues still run, even on
/// a machine too busy to apply it on time; queues read it with one relaxed load per batch.
public final class RunDeadline: Sendable {
    private let deadlineNs: Atomic<UInt64>

    public init(ns: UInt64) { deadlineNs = Atomic(ns) }

    @inline(__always) public var ns: UInt64 { deadlineNs.load(ordering: .relaxed) }

    /// Sets the deadline; only the run's control side writes it.
    public func set(ns: UInt64) { deadlineNs.store(ns, ordering: .relaxed) }
}
