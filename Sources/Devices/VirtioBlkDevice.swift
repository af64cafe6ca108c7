import StrataGraph
import StrataRuntime

/// A virtio-blk device queue: pops requests from a split virtqueue in (guest) memory, serves them
/// through the graph version its queue has installed, writes the status byte and returns the chain
/// on the used ring. One per queue, bound to that queue's executor.
public actor VirtioBlkDevice: GraphAttachment {
    /// What one call to `serviceOne` did.
    public struct ServiceOutcome: Sendable {
        public let serviced: Bool
        /// Graph switches installed on this queue so far.
        public let switchCount: Int
    }

    public nonisolated let unownedExecutor: UnownedSerialExecutor
    public nonisolated let backendName: String
    public nonisolated let queueIndex: Int
    private var virtqueue: VirtqueueDevice
    private let capacitySectors: UInt64
    private let segmentsPerRequest: Int
    private let segmentStorage: UnsafeMutableBufferPointer<IOBuffer>
    private let deviceID: String
    private var root: VersionedRoot?
    private(set) var switchTimes: [(version: UInt64, timeNs: UInt64)] = []
    /// Chains that were not virtio-blk requests at all (returned with used length 0).
    public private(set) var malformedChains = 0

    public init(queue: QueueContext, backendName: String, capacityBytes: UInt64, virtqueue: SplitVirtqueue, segmentsPerRequest: Int = 16) {
        precondition(segmentsPerRequest > 0)
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.backendName = backendName
        self.queueIndex = queue.index
        self.virtqueue = VirtqueueDevice(queue: virtqueue)
        self.capacitySectors = capacityBytes / UInt64(VirtioBlk.sectorSize)
        self.segmentsPerRequest = segmentsPerRequest
        // One segment array per descriptor head: a head is unique while its request is in flight.
        segmentStorage = .allocate(capacity: virtqueue.size * segmentsPerRequest)
        segmentStorage.initialize(repeating: .empty)
        deviceID = String("strata-\(backendName)".prefix(VirtioBlk.deviceIDLength))
    }

    isolated deinit { segmentStorage.deallocate() }

    public func install(_ version: GraphVersion) -> UInt64 {
        if let root { root.install(version) } else { root = VersionedRoot(version) }
        let now = MonotonicClock.now()
        switchTimes.append((version.number, now))
        return now
    }

    public func drain(olderThan number: UInt64) async {
        await root?.drain(olderThan: number)
    }

    /// The switch times recorded after the first `count`.
    public func switches(after count: Int) -> [(version: UInt64, timeNs: UInt64)] {
        Array(switchTimes.dropFirst(count))
    }

    /// Serves the next available request to completion, if there is one.
    public func serviceOne() async -> ServiceOutcome {
        let head: UInt16
        do {
            guard let available = try virtqueue.popAvail() else { return ServiceOutcome(serviced: false, switchCount: switchTimes.count) }
            head = available
        } catch {
            // The avail index itself is corrupt: nothing can be popped safely.
            malformedChains += 1
            return ServiceOutcome(serviced: false, switchCount: switchTimes.count)
        }
        let storage = UnsafeMutableBufferPointer(rebasing: segmentStorage[Int(head) * segmentsPerRequest ..< Int(head + 1) * segmentsPerRequest])
        let request: VirtioBlkRequest
        do {
            request = try VirtioBlkRequest.parse(virtqueue.chain(head: head), capacitySectors: capacitySectors, segmentStorage: storage)
        } catch {
            malformedChains += 1
            virtqueue.pushUsed(id: head, length: 0)
            return ServiceOutcome(serviced: true, switchCount: switchTimes.count)
        }
        let usedLength: UInt32
        switch request.action {
        case .complete(let status):
            usedLength = request.complete(status)
        case .getID:
            usedLength = request.completeGetID(deviceID)
        case .io:
            // Runs on the version current now; it finishes there even if the graph switches meanwhile.
            var status = IOStatus.ioError
            if let root {
                let version = root.begin()
                if let single = request.blockRequest() {
                    status = await version.root.submit(single)
                } else {
                    status = await submitSegments(request, to: version.root)
                }
                root.end(version)
            }
            usedLength = request.complete(status.isOK ? .ok : .ioError)
        }
        virtqueue.pushUsed(id: head, length: usedLength)
        return ServiceOutcome(serviced: true, switchCount: switchTimes.count)
    }

    /// A request scattered over several guest buffers: one node request per buffer, in order.
    private func submitSegments(_ request: VirtioBlkRequest, to node: any BlockNode) async -> IOStatus {
        for segment in request.segmentRequests() {
            let status = await node.submit(segment)
            if !status.isOK { return status }
        }
        return .ok
    }
}
