import StrataRuntime

/// The attachment through which a front end (an image tool session, an NBD export) sends requests
/// into the graph on one queue: the counterpart of a device queue. Bound to its queue's executor,
/// so a request walks the node instances on that thread; each request pins the graph version it
/// starts on.
public actor BackendPort: GraphAttachment {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    public nonisolated let backendName: String
    public nonisolated let queueIndex: Int
    private let versions = VersionedRoot()

    public init(backendName: String, queue: QueueContext) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.backendName = backendName
        self.queueIndex = queue.index
    }

    public func install(_ version: GraphVersion) -> UInt64 {
        versions.install(version)
        return MonotonicClock.now()
    }

    public func drain(olderThan number: UInt64) async {
        await versions.drain(olderThan: number)
    }

    /// Serves one request; its buffer must stay valid until this returns.
    public func submit(_ request: BlockRequest) async -> IOStatus {
        guard let pinned = versions.begin() else { return .ioError }
        let root = pinned._withUnsafeGuaranteedRef { $0.rootHandle }
        let status = await root.submit(request)
        versions.end(pinned)
        return status
    }
}
