import CStrataShim
import StrataGraph
import StrataRuntime

/// A virtio-blk device queue: pops requests from a split virtqueue in (guest) memory, serves them
/// through the graph version its queue has installed, writes the status byte and returns the chain
/// on the used ring. One per queue, bound to that queue's executor.
public actor VirtioBlkDevice: GraphAttachment {
    /// How the device was configured and negotiated.
    public struct Settings: Sendable {
        /// seg_max: data buffers one request may have (after merging adjacent ones).
        public var segmentsPerRequest = 16
        /// VIRTIO_RING_F_EVENT_IDX negotiated.
        public var eventIndex = false
        /// The available position to consume first and the used index the driver last saw (a
        /// resumed queue); 0 for a new one.
        public var nextAvailableIndex: UInt16 = 0
        public var usedIndex: UInt16 = 0
        /// VIRTIO_BLK_F_RO: writes, discards and write-zeroes fail with IOERR.
        public var readOnly = false
        /// blk_size: reads and writes must start and end on it.
        public var logicalBlockSize = VirtioBlk.sectorSize
        /// What GET_ID answers (at most 20 bytes are sent); nil: "strata-BACKEND".
        public var deviceID: String?
        /// The front end's record of requests in flight (vhost-user INFLIGHT_SHMFD): a resumed
        /// queue first serves again what a predecessor popped and never returned, and starts
        /// popping after it.
        public var inflight: VirtqueueInflight?
        /// Adjacent reads or writes published together go to the node as one request (QEMU's
        /// virtio-blk `request-merging`, on by default there too).
        public var requestMerging = true
        /// The tag every request of this queue carries (a scheduling policy's tenant); nil: the
        /// queue's index.
        public var tenantTag: UInt32?
        /// Completions reach used.idx only when `needsNotification` is asked, once per batch (see
        /// `VirtqueueDevice.defersUsedIndex`); every completion must then be followed by that call.
        /// Not with `inflight`.
        public var defersUsedIndex = false

        public init() {}
    }

    public nonisolated let unownedExecutor: UnownedSerialExecutor
    public nonisolated let backendName: String
    public nonisolated let queueIndex: Int
    /// Every request of this queue carries this tag (by default the queue's index): a scheduling
    /// policy below tells tenants apart by it, so each queue is one.
    private nonisolated let tenantTag: UInt32
    private let executor: QueueExecutor
    /// The queue's memory, for what reads it without the actor (`VirtqueueAvailablePoll`).
    public nonisolated let splitVirtqueue: SplitVirtqueue
    private var virtqueue: VirtqueueDevice
    private let capacitySectors: UInt64
    private let segmentsPerRequest: Int
    private let segmentStorage: UnsafeMutableBufferPointer<IOBuffer>
    private let deviceID: String
    private let readOnly: Bool
    /// Sectors per logical block, minus one: a mask for the alignment check.
    private let blockSectorMask: UInt64
    private let versions = VersionedRoot()
    /// Per head: the request waiting there, valid while `isPending` says so. Plain memory, read in
    /// place by `finish`, so a request's few hundred bytes are not copied into its async frame.
    private let pending: UnsafeMutablePointer<PendingRequest>
    private let isPending: UnsafeMutableBufferPointer<Bool>
    /// Bounce buffers for scattered requests, made on first use, at most this many of this size.
    fileprivate static let bounceBytes = 1 << 20
    private static let maxBounceBuffers = 8
    private var freeBounces: [UnsafeMutableRawPointer] = []
    /// Scattered requests served through a bounce buffer, as one node request.
    public private(set) var bouncedRequests = 0
    /// Requests merged into the one before them (QEMU's rd_merged + wr_merged).
    public private(set) var mergedRequests = 0
    private let requestMerging: Bool
    /// Most requests one merge may take in, the first included (QEMU's virtio-blk takes 32).
    static let maxMergedRequests = 32
    /// Per head: the request merged after it, and the requests merged into another (by their head).
    private let mergedNext: UnsafeMutableBufferPointer<UInt16>
    private let followers: UnsafeMutableBufferPointer<VirtioBlkRequest?>
    private let inflight: VirtqueueInflight?
    private var inflightCounter: UInt64 = 1
    /// Heads a predecessor left in flight, newest first (served from the end).
    private var resubmitQueue: [UInt16] = []
    /// Requests served again from the inflight record when the queue started.
    public nonisolated let resubmittedCount: Int
    /// Owns `segmentStorage` and `pending` and frees them with the device. A class rather than an
    /// actor deinit: an isolated deinit on this actor sends Swift 6.3's optimizer into a cycle
    /// when another module creates the device ("circular reference", release builds).
    private let storage: HeadStorage
    private(set) var switchTimes: [(version: UInt64, timeNs: UInt64)] = []
    /// Chains that were not virtio-blk requests at all (returned with used length 0).
    public private(set) var malformedChains = 0
    /// The driver's available index ran more than a queue ahead: the queue is broken and the
    /// device needs a reset; nothing more is popped.
    public private(set) var isBroken = false
    /// VIRTIO_BLK_F_CONFIG_WCE's writeback field: off means writethrough, each write followed by a
    /// flush before it completes.
    public private(set) var writeCacheEnabled = true

    public func setWriteCache(_ enabled: Bool) { writeCacheEnabled = enabled }

    public init(queue: QueueContext, backendName: String, capacityBytes: UInt64, virtqueue: SplitVirtqueue, segmentsPerRequest: Int = 16) {
        var settings = Settings()
        settings.segmentsPerRequest = segmentsPerRequest
        self.init(queue: queue, backendName: backendName, capacityBytes: capacityBytes, virtqueue: virtqueue, settings: settings)
    }

    public init(queue: QueueContext, backendName: String, capacityBytes: UInt64, virtqueue: SplitVirtqueue, settings: Settings) {
        precondition(settings.segmentsPerRequest > 0)
        precondition(settings.logicalBlockSize >= VirtioBlk.sectorSize && settings.logicalBlockSize & (settings.logicalBlockSize - 1) == 0,
                     "a logical block is a power of two of at least 512 bytes")
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        executor = queue.executor
        self.backendName = backendName
        self.queueIndex = queue.index
        self.tenantTag = settings.tenantTag ?? UInt32(truncatingIfNeeded: queue.index)
        var nextAvailable = settings.nextAvailableIndex
        if let record = settings.inflight {
            precondition(record.queueSize == virtqueue.size, "an inflight record of \(record.queueSize) entries for a queue of \(virtqueue.size)")
            let (heads, counter) = record.recover(usedIndex: settings.usedIndex)
            resubmitQueue = heads.reversed()
            inflightCounter = counter
            // Every head popped before is either used or in the record (libvhost-user's rule).
            nextAvailable = settings.usedIndex &+ UInt16(truncatingIfNeeded: heads.count)
        }
        inflight = settings.inflight
        resubmittedCount = resubmitQueue.count
        freeBounces.reserveCapacity(Self.maxBounceBuffers)
        splitVirtqueue = virtqueue
        self.virtqueue = VirtqueueDevice(queue: virtqueue, eventIndex: settings.eventIndex, maxIndirectEntries: 1024,
                                         nextAvailableIndex: nextAvailable, usedIndex: settings.usedIndex)
        precondition(!(settings.defersUsedIndex && settings.inflight != nil), "an inflight record needs used.idx stored per chain")
        self.virtqueue.defersUsedIndex = settings.defersUsedIndex
        self.capacitySectors = capacityBytes / UInt64(VirtioBlk.sectorSize)
        self.segmentsPerRequest = settings.segmentsPerRequest
        // One segment array per descriptor head: a head is unique while its request is in flight.
        storage = HeadStorage(heads: virtqueue.size, segmentsPerHead: settings.segmentsPerRequest, numaNode: queue.executor.numaNode)
        segmentStorage = storage.segments
        pending = storage.pending
        isPending = storage.isPending
        deviceID = String((settings.deviceID ?? "strata-\(backendName)").utf8.prefix(VirtioBlk.deviceIDLength))!
        readOnly = settings.readOnly
        requestMerging = settings.requestMerging
        mergedNext = storage.mergedNext
        followers = storage.followers
        blockSectorMask = UInt64(settings.logicalBlockSize / VirtioBlk.sectorSize - 1)
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

    /// The per-head arrays. `@unchecked Sendable`: created and freed with the device, touched only
    /// through the device's own pointers, on its executor.
    private final class HeadStorage: @unchecked Sendable {
        let segments: UnsafeMutableBufferPointer<IOBuffer>
        let pending: UnsafeMutablePointer<PendingRequest>
        let isPending: UnsafeMutableBufferPointer<Bool>
        let mergedNext: UnsafeMutableBufferPointer<UInt16>
        let followers: UnsafeMutableBufferPointer<VirtioBlkRequest?>
        /// Every bounce buffer the device made, on `numaNode`.
        var bounces: [UnsafeMutableRawPointer] = []
        let numaNode: Int32

        init(heads: Int, segmentsPerHead: Int, numaNode: Int32) {
            self.numaNode = numaNode
            segments = .allocate(capacity: heads * segmentsPerHead)
            segments.initialize(repeating: .empty)
            // Trivial, so a slot is written and dropped without reference counting or deinit.
            precondition(_isPOD(PendingRequest.self), "a pending request holds no counted reference")
            pending = .allocate(capacity: heads)
            isPending = .allocate(capacity: heads)
            isPending.initialize(repeating: false)
            mergedNext = .allocate(capacity: heads)
            mergedNext.initialize(repeating: 0)
            followers = .allocate(capacity: heads)
            followers.initialize(repeating: nil)
        }

        deinit {
            for bounce in bounces { strata_free_aligned(bounce, VirtioBlkDevice.bounceBytes, numaNode) }
            segments.deallocate()
            pending.deallocate()
            isPending.deallocate()
            mergedNext.deallocate()
            _ = followers.deinitialize()
            followers.deallocate()
        }
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
        /// The requests merged into this one.
        var merged: MergeGroup
    }

    /// Requests merged after a first one: chained from its head through `mergedNext`, their data
    /// in `bounce` when their buffers do not continue one another in host memory.
    private struct MergeGroup {
        var count = 0
        var bounce: UnsafeMutableRawPointer?
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
        guard !isBroken else { return .idle }
        let head: UInt16
        if let again = resubmitQueue.popLast() {
            head = again
        } else {
            do {
                guard let available = try virtqueue.popAvail() else { return .idle }
                head = available
            } catch {
                // The avail index itself is corrupt: nothing can be popped safely.
                malformedChains += 1
                isBroken = true
                return .idle
            }
            guard Int(head) < virtqueue.queue.size else {
                // Returned as is: the used ring names only heads of the table.
                malformedChains += 1
                isBroken = true
                return .idle
            }
            guard !isPending[Int(head)] && followers[Int(head)] == nil else {
                // A head still in flight, published again: its slot and segments are taken, and
                // the used ring could not tell the two apart. QEMU breaks the device too.
                malformedChains += 1
                isBroken = true
                return .idle
            }
            if let inflight {
                inflight.fetched(head, counter: inflightCounter)
                inflightCounter &+= 1
            }
        }
        let storage = UnsafeMutableBufferPointer(rebasing: segmentStorage[Int(head) * segmentsPerRequest ..< Int(head + 1) * segmentsPerRequest])
        let request: VirtioBlkRequest
        do {
            request = try VirtioBlkRequest.parse(virtqueue.chain(head: head), capacitySectors: capacitySectors, segmentStorage: storage)
        } catch {
            malformedChains += 1
            returnChain(head, 0)
            return .completed
        }
        switch request.action {
        case .complete(let status):
            returnChain(head, request.complete(status))
        case .getID:
            returnChain(head, request.completeGetID(deviceID))
        case .io(let operation):
            if let refusal = refusal(request, operation) {
                returnChain(head, request.complete(refusal))
                return .completed
            }
            // The request runs on the version current now, even if the graph switches meanwhile.
            guard let version = versions.begin() else {
                returnChain(head, request.complete(.ioError))
                return .completed
            }
            var target = version._withUnsafeGuaranteedRef { $0.rootReference }
            var trail = RouteTrail()
            guard var routed = request.blockRequest(tag: tenantTag), writeCacheEnabled || operation != .write else {
                // Scattered over several buffers: submitted segment by segment through the root's handle.
                keepPending(PendingRequest(request: request, target: target, routed: nil, version: version,
                                           trail: trail, pastTrailCapacity: true, merged: MergeGroup()))
                return .pending(head: head)
            }
            var merged = MergeGroup()
            if requestMerging && (operation == .read || operation == .write) && resubmitQueue.isEmpty {
                merged = mergeFollowing(request, operation, into: &routed)
                if merged.count > 0 { target.countMerged(operation, count: merged.count) }
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
                    completeMerged(request, merged, ok: status.isOK)
                    return .completed
                case .suspend:
                    trail.suspend(routed)
                    keepPending(PendingRequest(request: request, target: target, routed: routed, version: version,
                                               trail: trail, pastTrailCapacity: false, merged: merged))
                    return .pending(head: head)
                }
            }
            trail.suspend(routed)
            keepPending(PendingRequest(request: request, target: target, routed: routed, version: version,
                                       trail: trail, pastTrailCapacity: true, merged: merged))
            return .pending(head: head)
        }
        return .completed
    }

    /// Serves a pending request to completion and returns its chain on the used ring.
    public func finish(head: UInt16) async {
        precondition(isPending[Int(head)], "no pending request at head \(head)")
        // In place: the slot is this request's until it is returned on the used ring below.
        let slot = pending + Int(head)
        let target = slot.pointee.target
        let status: IOStatus
        if let routed = slot.pointee.routed {
            status = slot.pointee.pastTrailCapacity ? await target.counted.submit(routed) : await target.node.submit(routed)
            slot.pointee.trail.resumed(routed, status: status)
        } else if let whole = slot.pointee.request.blockRequest(tag: tenantTag) {
            // Writethrough (the write cache is off): the write is durable before it completes.
            let written = await target.counted.submit(whole)
            status = written.isOK ? await target.counted.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0,
                                                                               buffer: .empty)) : written
        } else {
            status = await submitSegments(slot.pointee.request, to: target.counted)
        }
        versions.end(slot.pointee.version)
        isPending[Int(head)] = false
        completeMerged(slot.pointee.request, slot.pointee.merged, ok: status.isOK)
    }

    /// Keeps a request that must wait in its head's slot until `finish`.
    private func keepPending(_ request: PendingRequest) {
        let head = Int(request.request.head)
        precondition(!isPending[head], "head \(head) is already pending")
        (pending + head).initialize(to: request)
        isPending[head] = true
    }

    /// Takes in the requests published after `first` that continue it: the same operation on the
    /// next bytes of the device, each in one buffer, up to a bounce buffer's size. Each is looked
    /// at through its header before it is parsed and consumed, so one that does not continue
    /// stays on the ring for the next `serviceNext`. `routed` grows to cover them.
    private func mergeFollowing(_ first: VirtioBlkRequest, _ operation: BlockOperation, into routed: inout BlockRequest) -> MergeGroup {
        var group = MergeGroup()
        var last = first.head
        while group.count + 1 < Self.maxMergedRequests {
            let end = routed.offsetBytes &+ UInt64(routed.lengthBytes)
            guard let head = try? virtqueue.peekAvail(), Int(head) < virtqueue.queue.size, head != first.head, followers[Int(head)] == nil,
                  !isPending[Int(head)], let header = VirtioBlkRequest.peekHeader(virtqueue.chain(head: head)),
                  header.type == first.type, header.sector &* UInt64(VirtioBlk.sectorSize) == end
            else { break }
            let storage = UnsafeMutableBufferPointer(rebasing: segmentStorage[Int(head) * segmentsPerRequest ..< Int(head + 1) * segmentsPerRequest])
            // What counts is what the parse read: the guest may have rewritten the header since.
            guard let next = try? VirtioBlkRequest.parse(virtqueue.chain(head: head), capacitySectors: capacitySectors, segmentStorage: storage),
                  next.action == .io(operation), next.offsetBytes == end, refusal(next, operation) == nil, let data = next.data,
                  let dataBase = data.base, routed.lengthBytes + next.lengthBytes <= Self.bounceBytes
            else { break }
            if group.bounce == nil, let base = routed.buffer.base, base + routed.lengthBytes == dataBase {
                routed.buffer = IOBuffer(base: base, count: routed.lengthBytes + next.lengthBytes)
            } else {
                if group.bounce == nil {
                    guard let bounce = takeBounce() else { break }
                    if operation == .write, let base = routed.buffer.base { bounce.copyMemory(from: base, byteCount: routed.lengthBytes) }
                    group.bounce = bounce
                }
                let bounce = group.bounce!
                if operation == .write { (bounce + routed.lengthBytes).copyMemory(from: dataBase, byteCount: next.lengthBytes) }
                routed.buffer = IOBuffer(base: bounce, count: routed.lengthBytes + next.lengthBytes)
            }
            routed.lengthBytes += next.lengthBytes
            virtqueue.skipPeeked()
            if let inflight {
                inflight.fetched(head, counter: inflightCounter)
                inflightCounter &+= 1
            }
            followers[Int(head)] = next
            mergedNext[Int(last)] = head
            last = head
            group.count += 1
        }
        mergedRequests += group.count
        return group
    }

    /// Completes `first` and the requests merged after it, copying a bounced read out first.
    private func completeMerged(_ first: VirtioBlkRequest, _ group: MergeGroup, ok: Bool) {
        let bouncedRead = ok && first.type == .read ? group.bounce : nil
        if let bouncedRead { _ = first.scatter(from: IOBuffer(base: bouncedRead, count: first.lengthBytes)) }
        returnChain(first.head, first.complete(ok ? .ok : .ioError))
        var head = first.head
        var offset = first.lengthBytes
        for _ in 0..<group.count {
            head = mergedNext[Int(head)]
            guard let follower = followers[Int(head)].take() else { preconditionFailure("no merged request at head \(head)") }
            if let bouncedRead { _ = follower.scatter(from: IOBuffer(base: bouncedRead + offset, count: follower.lengthBytes)) }
            offset += follower.lengthBytes
            returnChain(head, follower.complete(ok ? .ok : .ioError))
        }
        if let bounce = group.bounce { freeBounces.append(bounce) }
    }

    /// Publishes a chain on the used ring, recording it done in the inflight record around it.
    private func returnChain(_ head: UInt16, _ length: UInt32) {
        inflight?.completing(head)
        virtqueue.pushUsed(id: head, length: length)
        inflight?.completed(head, usedIndex: virtqueue.publishedUsedIndex)
    }

    /// A request scattered over several guest buffers (a guest's large request spans pages): one
    /// node request through a bounce buffer, or, when the request is larger than one or all are
    /// taken, one node request per buffer, in order. A write is followed by a flush when the
    /// write cache is off.
    private func submitSegments(_ request: VirtioBlkRequest, to node: NodeHandle) async -> IOStatus {
        if case .io(let operation) = request.action, request.lengthBytes <= Self.bounceBytes, let bounce = takeBounce() {
            defer { freeBounces.append(bounce) }
            let buffer = IOBuffer(base: bounce, count: request.lengthBytes)
            if operation == .write { _ = request.gather(into: buffer) }
            let status = await node.submit(BlockRequest(operation: operation, offsetBytes: request.offsetBytes,
                                                        lengthBytes: request.lengthBytes, buffer: buffer))
            bouncedRequests += 1
            guard status.isOK else { return status }
            if operation == .read { _ = request.scatter(from: buffer) }
            if operation == .write && !writeCacheEnabled {
                return await node.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0, buffer: .empty))
            }
            return .ok
        }
        for segment in request.segmentRequests(tag: tenantTag) {
            let status = await node.submit(segment)
            if !status.isOK { return status }
        }
        if !writeCacheEnabled, case .io(.write) = request.action {
            return await node.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0, buffer: .empty))
        }
        return .ok
    }

    /// A free bounce buffer; one more is made while fewer than `maxBounceBuffers` exist (steady
    /// state makes none).
    private func takeBounce() -> UnsafeMutableRawPointer? {
        if let free = freeBounces.popLast() { return free }
        guard storage.bounces.count < Self.maxBounceBuffers else { return nil }
        // 4 KiB aligned, so O_DIRECT files take it as it is, and on the queue's CPU's NUMA node.
        guard let made = strata_alloc_aligned(Self.bounceBytes, 4096, executor.numaNode) else { return nil }
        storage.bounces.append(made)
        return made
    }

    /// The status a request gets without reaching the graph: a change to a read-only device, or a
    /// read or write not on logical-block boundaries.
    private func refusal(_ request: VirtioBlkRequest, _ operation: BlockOperation) -> VirtioBlkStatus? {
        switch operation {
        case .write, .discard, .writeZeroes:
            if readOnly { return .ioError }
        default:
            break
        }
        guard blockSectorMask != 0, operation == .read || operation == .write else { return nil }
        let sectors = UInt64(request.lengthBytes / VirtioBlk.sectorSize)
        return (request.offsetBytes / UInt64(VirtioBlk.sectorSize)) & blockSectorMask != 0 || sectors & blockSectorMask != 0 ? .ioError : nil
    }

    // MARK: Notifications (a device fed by a real driver)

    /// Whether the driver wants an interrupt for the chains used since the last call.
    public func needsNotification() -> Bool { virtqueue.needsNotification() }

    /// Asks for kicks before sleeping (then recheck `hasAvailable`), or stops asking while busy.
    public func requestKicks(_ enabled: Bool) { virtqueue.requestKicks(enabled) }

    /// Whether the driver published a chain not yet popped; false once the queue is broken.
    public func hasAvailable() -> Bool {
        guard !isBroken else { return false }
        do { return try virtqueue.hasAvailable() } catch {
            isBroken = true
            return false
        }
    }

    /// last_avail_idx: where a restarted queue resumes (vhost-user's GET_VRING_BASE).
    public var nextAvailableIndex: UInt16 { virtqueue.nextAvailableIndex }
}
