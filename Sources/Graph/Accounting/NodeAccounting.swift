import StrataRuntime

/// A node's accounting: one `NodeQueueStats` per queue, kept while the node stays in the graph
/// (across versions and edits), summed only when someone asks.
public final class NodeAccounting: Sendable {
    public let perQueue: [NodeQueueStats]

    public init(queues: [QueueContext]) {
        perQueue = queues.map { NodeQueueStats(queueIndex: $0.index, owner: $0.executor) }
        assert(perQueue.enumerated().allSatisfy { $0.offset == $0.element.queueIndex }, "queue contexts are indexed in order")
    }

    public func snapshot() -> NodeStatsSnapshot {
        var sum = NodeStatsSnapshot()
        for queue in perQueue { queue.add(into: &sum) }
        return sum
    }

    /// Sets QEMU's custom latency histograms of the classes given (empty boundaries remove one);
    /// the others keep theirs. Each queue changes its own, on its own executor, so the request
    /// path keeps one writer.
    public func setCustomHistograms(_ boundaries: [AccountedOperation: [UInt64]]) async {
        for queue in perQueue {
            let apply: @Sendable () -> Void = {
                for (operation, values) in boundaries { queue.setCustomHistogram(operation, boundaries: values) }
            }
            if let owner = queue.owner { await QueueRunner(owner).run(apply) } else { apply() }
        }
    }
}

/// Runs a closure on a queue's executor, between two of its requests.
actor QueueRunner {
    nonisolated let unownedExecutor: UnownedSerialExecutor

    init(_ executor: QueueExecutor) { unownedExecutor = executor.asUnownedSerialExecutor() }

    func run(_ body: @Sendable () -> Void) { body() }
}
