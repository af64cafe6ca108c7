import StrataGraph
import StrataRuntime

/// The attachment through which an image session sends requests into the graph on one queue:
/// the tools' counterpart of a device queue. Bound to its queue's executor, so a request walks
/// the node instances on that thread; each request pins the graph version it starts on.
actor ImageSessionPort: GraphAttachment {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    nonisolated let backendName: String
    nonisolated let queueIndex: Int
    private let versions = VersionedRoot()

    init(backendName: String, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.backendName = backendName
        self.queueIndex = queue.index
    }

    func install(_ version: GraphVersion) -> UInt64 {
        versions.install(version)
        return MonotonicClock.now()
    }

    func drain(olderThan number: UInt64) async {
        await versions.drain(olderThan: number)
    }

    /// Serves one request; its buffer must stay valid until this returns.
    func submit(_ request: BlockRequest) async -> IOStatus {
        guard let pinned = versions.begin() else { return .ioError }
        let root = pinned._withUnsafeGuaranteedRef { $0.root }
        let status = await root.submit(request)
        versions.end(pinned)
        return status
    }
}
