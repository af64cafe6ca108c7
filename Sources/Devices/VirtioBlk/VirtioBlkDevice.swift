import StrataGraph
import StrataRuntime

/// A virtio-blk device queue: pops requests from a split virtqueue in (guest) memory, serves them
/// through the graph version its queue has installed, writes the status byte and returns the chain
/// on the used ring. One per queue, bound to that queue's executor.
public actor VirtioBlkDevice: GraphAttachment {
    public nonisolated let unownedExecutor: UnownedSerialExecutor
    public nonisolated let backendName: String
    public nonisolated let queueIndex: Int
    private let executor: QueueExecutor
    private var virtqueue: VirtqueueDevice
    private let capacitySectors: UInt64
    private let segmentsPerRequest: Int
    private let segmentStorage: UnsafeMutableBufferPointer<IOBuffer>
    private let deviceID: String
    private let versions = VersionedRoot()
    private let pending: UnsafeMutableBufferPointer<PendingRequest?>
    private(set) var switchTimes: [(version: UInt64, timeNs: UInt64)] = []
    /// Chains that were not virtio-blk requests at all (returned with used length 0).
    public private(set) var malformedChains = 0

    public init(queue: QueueContext, backendName: String, capacityBytes: UInt64, virtqueue: SplitVirtqueue, segmentsPerRequest: Int = 16) {
        precondition(segmentsPerRequest > 0)
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        executor = queue.executor
        self.backendName = backendName
        self.queueIndex = queue.index
        self.virtqueue = VirtqueueDevice(queue: virtqueue)
        self.capacitySectors = capacityBytes / UInt64(VirtioBlk.sectorSize)
        self.segmentsPerRequest = segmentsPerRequest
        // One segment array per descriptor head: a head is unique while its request is in flight.
        segmentStorage = .allocate(capacity: virtqueue.size * segmentsPerRequest)
        segmentStorage.initialize(repeating: .empty)
        pending = .allocate(capacity: virtqueue.size)
        pending.initialize(repeating: nil)
        deviceID = String("strata-\(backendName)".prefix(VirtioBlk.deviceIDLength))
    }

    isolated deinit {
        segmentStorage.deallocate()
        _ = pending.deinitialize()
        pending.deallocate()
    }

    public func install(_ version: GraphVersion) -> UInt64 {
        versions.install(version)
        // Stamped on the cycle clock, as the guest's requests are, so the two compare.
        switchTimes.append((version.number, CycleClock.now()))
        return MonotonicClock.now()
    }

    public func drain(olderThan number: UInt64) async {
        await versions.drain(olderThan: number)
    }

    /// The switch times recorded after the first `count`.
    public func switches(after count: Int) -> [(version: UInt64, timeNs: UInt64)] {
        Array(switchTimes.dropFirst(count))
    }

    /// A request that must wait: the node that said `.suspend`, the request as routed to it, and
    /// the version it pinned. Kept per descriptor head (unique while in flight), so the
    /// synchronous step returns only the head and nothing is copied or allocated per request.
    private struct PendingRequest {
        var request: VirtioBlkRequest
        var target: NodeReference
        var routed: BlockRequest?
        var version: Unmanaged<GraphVersion>
        /// The nodes routed through so far, `target` included, credited when the request is done.
        var trail: RouteTrail
        /// The trail was full: `target` is submitted to through its (accounted) handle.
        var pastTrailCapacity: Bool
    }

    /// What the synchronous part of serving the next available request did.
    public enum ServiceStep: Equatable {
        /// Nothing was available.
        case idle
        /// A request was served to completion without suspending (or answered at once).
        case completed
        /// The request at this head must wait for I/O or a budget: `finish` it.
        case pending(head: UInt16)
    }

    /// Graph switches installed on this queue so far.
    public var switchCount: Int { switchTimes.count }

    /// Pops the next request and serves what can be served synchronously: parsing, answering
    /// malformed or immediate requests, and routing through nodes that forward or complete at once.
    public func serviceNext() -> ServiceStep {
        let head: UInt16
        do {
            guard let available = try virtqueue.popAvail() else { return .idle }
            head = available
        } catch {
            // The avail index itself is corrupt: nothing can be popped safely.
            malformedChains += 1
            return .idle
        }
        let storage = UnsafeMutableBufferPointer(rebasing: segmentStorage[Int(head) * segmentsPerRequest ..< Int(head + 1) * segmentsPerRequest])
        let request: VirtioBlkRequest
        do {
            request = try VirtioBlkRequest.parse(virtqueue.chain(head: head), capacitySectors: capacitySectors, segmentStorage: storage)
        } catch {
            malformedChains += 1
            virtqueue.pushUsed(id: head, length: 0)
            return .completed
        }
        switch request.action {
        case .complete(let status):
            virtqueue.pushUsed(id: head, length: request.complete(status))
        case .getID:
            virtqueue.pushUsed(id: head, length: request.completeGetID(deviceID))
        case .io:
            // The request runs on the version current now, even if the graph switches meanwhile.
            guard let version = versions.begin() else {
                virtqueue.pushUsed(id: head, length: request.complete(.ioError))
                return .completed
            }
            var target = version._withUnsafeGuaranteedRef { $0.rootReference }
            var trail = RouteTrail()
            guard var routed = request.blockRequest() else {
                // Scattered over several buffers: submitted segment by segment through the root's handle.
                pending[Int(head)] = PendingRequest(request: request, target: target, routed: nil, version: version,
                                                    trail: trail, pastTrailCapacity: true)
                return .pending(head: head)
            }
            let turnStartNs = executor.turnStartNs
            var entered = trail.enter(target, routed, turnStartNs: turnStartNs)
            while entered {
                switch target.route(&routed) {
                case .forward(let next):
                    target = next
                    entered = trail.enter(target, routed, turnStartNs: turnStartNs)
                case .complete(let status):
                    trail.completed(routed, status: status, turnStartNs: turnStartNs)
                    versions.end(version)
                    virtqueue.pushUsed(id: head, length: request.complete(status.isOK ? .ok : .ioError))
                    return .completed
                case .suspend:
                    trail.suspend(routed)
                    pending[Int(head)] = PendingRequest(request: request, target: target, routed: routed, version: version,
                                                        trail: trail, pastTrailCapacity: false)
                    return .pending(head: head)
                }
            }
            trail.suspend(routed)
            pending[Int(head)] = PendingRequest(request: request, target: target, routed: routed, version: version,
                                                trail: trail, pastTrailCapacity: true)
            return .pending(head: head)
        }
        return .completed
    }

    /// Serves a pending request to completion and returns its chain on the used ring.
    public func finish(head: UInt16) async {
        guard let pending = pending[Int(head)].take() else { preconditionFailure("no pending request at head \(head)") }
        let status: IOStatus
        if let routed = pending.routed {
            status = pending.pastTrailCapacity ? await pending.target.counted.submit(routed) : await pending.target.node.submit(routed)
            pending.trail.resumed(routed, status: status)
        } else {
            status = await submitSegments(pending.request, to: pending.target.counted)
        }
        versions.end(pending.version)
        virtqueue.pushUsed(id: pending.request.head, length: pending.request.complete(status.isOK ? .ok : .ioError))
    }

    /// A request scattered over several guest buffers: one node request per buffer, in order.
    private func submitSegments(_ request: VirtioBlkRequest, to node: NodeHandle) async -> IOStatus {
        for segment in request.segmentRequests() {
            let status = await node.submit(segment)
            if !status.isOK { return status }
        }
        return .ok
    }
}
