import Glibc
import StrataGraph
import StrataRuntime

/// The running engine: one pinned queue executor per queue, a control executor, and the graph
/// controller that owns the graph on it.
public struct Engine: Sendable {
    public let control: QueueExecutor
    public let queues: [QueueContext]
    public let controller: GraphController

    /// `accounting: false` keeps no per-node statistics (for measuring what they cost);
    /// `pollMaxNs` is how long an idle queue may spin before it sleeps (QEMU's iothread `poll-max-ns`).
    public init(queueCount: Int, cpus: [Int]?, submitBatchLimit: UInt32 = 4, pollMaxNs: UInt64 = 0, accounting: Bool = true) throws {
        let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        control = try QueueExecutor(name: "strata-control")
        var queues: [QueueContext] = []
        for index in 0..<queueCount {
            let cpu = cpus.map { $0[index % $0.count] } ?? index % max(1, online)
            let executor = try QueueExecutor(name: "strata-q\(index)", cpu: cpu, submitBatchLimit: submitBatchLimit, pollMaxNs: pollMaxNs)
            queues.append(QueueContext(index: index, executor: executor, clock: MonotonicClock()))
        }
        self.queues = queues
        controller = GraphController(registry: DriverCatalog.registry, control: control, queues: queues, accounting: accounting)
    }

    public func shutdown() async {
        await controller.shutdown()
        for queue in queues { await queue.executor.shutdown() }
        await control.shutdown()
    }
}
