import StrataRuntime

/// One queue's entry point into one version of the graph: the root instance of a backend on that
/// queue, and how many requests started on it are still in flight.
///
/// `@unchecked Sendable`: it is built on the control executor and handed to its queue once; from
/// then on `inFlight` is read and written only on that queue's executor thread.
public final class GraphVersion: @unchecked Sendable {
    public let number: UInt64
    /// The root instance with its accounting: submit through it and the root is accounted.
    public let rootHandle: NodeHandle
    public var root: any BlockNode { rootHandle.node }
    /// `root` without reference counting, for the request path (the version holds its handle).
    public var rootReference: NodeReference { NodeReference(rootHandle) }
    @usableFromInline var inFlight = 0

    public init(number: UInt64, root: NodeHandle) {
        self.number = number
        self.rootHandle = root
    }

    /// A version over an unaccounted root, for tests and tools that build instances themselves.
    public convenience init(number: UInt64, root: any BlockNode) {
        self.init(number: number, root: NodeHandle(root))
    }
}

/// What a device queue or export connection embeds to follow graph versions: requests pin the
/// version they start on, `install` switches between two requests, and old versions are retired
/// once their last request is done. Owned by one actor on one queue executor (a class, so the
/// actor can await a drain without holding an inout access across the suspension).
public final class VersionedRoot {
    public private(set) var current: GraphVersion?
    private var retired: [GraphVersion] = []
    private var drainWaiters: [(olderThan: UInt64, continuation: CheckedContinuation<Void, Never>)] = []

    public init() {}

    /// Pins the current version for one request, nil before the first install. The reference is
    /// not counted: a version with requests in flight is held by `current` or `retired`.
    @inline(__always) public func begin() -> Unmanaged<GraphVersion>? {
        guard let version = current else { return nil }
        version.inFlight &+= 1
        return Unmanaged.passUnretained(version)
    }

    /// Unpins; retires the version if it was replaced and this was its last request.
    @inline(__always) public func end(_ pinned: Unmanaged<GraphVersion>) {
        pinned._withUnsafeGuaranteedRef { version in
            assert(version.inFlight > 0, "version \(version.number) unpinned more often than pinned")
            assert(version === current || retired.contains { $0 === version }, "a pinned version is current or retired, never freed")
            version.inFlight &-= 1
            if version.inFlight == 0 && version !== current { retire(version) }
        }
    }

    /// Switches to `next`; requests in flight finish on the version they started on.
    public func install(_ next: GraphVersion) {
        if let current {
            precondition(next.number > current.number, "graph versions only move forward")
            if current.inFlight > 0 { retired.append(current) }
        }
        current = next
        resumeDrainedWaiters()
    }

    /// Returns once no request started on a version numbered below `number` is in flight.
    public nonisolated(nonsending) func drain(olderThan number: UInt64) async {
        if !retired.contains(where: { $0.number < number }) { return }
        await withCheckedContinuation { waiter in
            if retired.contains(where: { $0.number < number }) { drainWaiters.append((number, waiter)) } else { waiter.resume() }
        }
    }

    public var inFlightOnOlderVersions: Int { retired.reduce(0) { $0 + $1.inFlight } }

    private func retire(_ version: GraphVersion) {
        assert(version.inFlight == 0, "version \(version.number) retired with requests in flight")
        retired.removeAll { $0 === version }
        resumeDrainedWaiters()
    }

    private func resumeDrainedWaiters() {
        guard !drainWaiters.isEmpty else { return }
        let oldest = retired.map(\.number).min() ?? UInt64.max
        let (ready, waiting) = (drainWaiters.filter { oldest >= $0.olderThan }, drainWaiters.filter { oldest < $0.olderThan })
        drainWaiters = waiting
        for waiter in ready { waiter.continuation.resume() }
    }
}

/// A device queue or export connection that serves one backend on one queue.
public protocol GraphAttachment: Actor {
    nonisolated var backendName: String { get }
    nonisolated var queueIndex: Int { get }
    /// Switches to `version` between two requests; returns the monotonic time of the switch.
    func install(_ version: GraphVersion) -> UInt64
    /// Returns once no request that started on a version older than `number` is in flight.
    func drain(olderThan number: UInt64) async
}
