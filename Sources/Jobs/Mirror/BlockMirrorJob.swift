import StrataFilters
import StrataGraph
import StrataNodes
import StrataRuntime
import Synchronization

/// blockdev-mirror (QEMU's block/mirror.c): copies `source` into `target` while the guest keeps
/// using the source, turns READY once the target has caught up, and at job-complete moves every
/// user of the source to the target in one transaction: no queue drains, no request is lost.
///
/// A `mirror_top` filter above the source marks what the guest writes as dirty (after the write,
/// so a copy that raced it is redone); the job copies dirty chunks, source to target, until none
/// is left. For the pivot, and all along in `write-blocking` copy mode, the filter also writes
/// every guest write to the target before completing it, and a barrier waits out the writes that
/// started before; once the map is clean no later write can leave the target behind.
public final class BlockMirrorJob: JobDriver, @unchecked Sendable {
    // `prepared`, `context` are touched by the job's own steps only (run, then commit or abort,
    // which the Job actor runs one at a time); `completeRequested` is an atomic.
    public enum Sync: String, Sendable {
        case full
        case top
        case none
    }

    public enum CopyMode: String, Sendable {
        case background
        case writeBlocking = "write-blocking"
    }

    public struct Plan: Sendable {
        public let source: String
        public let target: String
        /// The node whose users move to the target (`replaces`, default the source).
        public let replaces: String
        public let sync: Sync
        public let granularity: UInt64
        public let bufferBytes: Int
        public let copyMode: CopyMode
        public let filterName: String?
        /// Active commit (block-commit of the active layer, QEMU's commit_active_start): the
        /// target is the base of the source's chain, the job is of type `commit`, and only what
        /// the layers above the base hold is copied; they leave the chain at the pivot.
        public let committedLayers: [String]?
        public var onSourceError: JobErrorPolicy = .report
        public var onTargetError: JobErrorPolicy = .report

        public init(source: String, target: String, replaces: String, sync: Sync, granularity: UInt64, bufferBytes: Int,
                    copyMode: CopyMode, filterName: String?, committedLayers: [String]? = nil) {
            self.source = source
            self.target = target
            self.replaces = replaces
            self.sync = sync
            self.granularity = granularity
            self.bufferBytes = bufferBytes
            self.copyMode = copyMode
            self.filterName = filterName
            self.committedLayers = committedLayers
        }
    }

    /// Copies in flight at once, as QEMU's MAX_IN_FLIGHT.
    static let maxInFlight = 16

    public let plan: Plan
    let controller: GraphController
    private let completeRequested = Atomic<Bool>(false)
    private var prepared: (filter: String, reader: String, writer: String, ports: [BackendPort])?
    private var finishWithoutPivot = false
    /// The filter and the per-queue target ports once the job runs, for an atomic cancel.
    private let running = Locked<(filter: MirrorTopNodeState, targets: [any BlockTarget])?>(nil)
    /// An atomic cancel's cut is made: copy what is still dirty, flush, and end without a pivot.
    private let stopAtCut = Atomic<Bool>(false)
    /// The job has done that (or ended otherwise).
    private let stoppedAtCut = Atomic<Bool>(false)

    public init(plan: Plan, controller: GraphController) {
        self.plan = plan
        self.controller = controller
    }

    public var type: JobType { plan.committedLayers == nil ? .mirror : .commit }

    public func complete(_ context: JobContext) async throws { completeRequested.store(true, ordering: .releasing) }

    public func run(_ context: JobContext) async throws {
        let id = await context.id
        var filter: [String: JSONValue] = ["driver": .string("mirror_top"), "x-granularity": .int(Int64(plan.granularity))]
        if let name = plan.filterName { filter["node-name"] = .string(name) }
        let report = try await controller.apply([.insertFilterAbove(node: plan.source, filter: .object(filter))])
        guard let filterName = report.addedNodes.first, let filterState = try await controller.state(of: filterName) as? MirrorTopNodeState else {
            throw JobError("mirror: the filter was not added")
        }
        let size = try await controller.state(of: plan.source).sizeBytes
        // The target takes the source's size first, as mirror_run truncates it.
        let targetState = try await controller.state(of: plan.target)
        if targetState.sizeBytes != size {
            if let qcow2 = targetState as? Qcow2NodeState {
                try await qcow2.resize(to: size, executor: controller.control)
            } else if let file = targetState as? FileNodeState {
                try await file.resize(to: size)
            } else {
                throw JobError("Source and target image have different sizes")
            }
        }
        let map = filterState.dirtyMap
        // The job reads the source below the filter, and writes the target: from queue 0, and in
        // write-blocking mode from every queue (the filter's instances there).
        let reader = "#mirror-\(id)-source"
        let writer = "#mirror-\(id)-target"
        try await controller.apply([
            .addBackend(BackendEntry(name: reader, nodeName: plan.source, writable: false, shareWrites: true)),
            .addBackend(BackendEntry(name: writer, nodeName: plan.target, writable: true, shareWrites: true)),
        ])
        let readPort = BackendPort(backendName: reader, queue: controller.queues[0])
        try await controller.attach(readPort)
        var writePorts: [BackendPort] = []
        for queue in controller.queues {
            let port = BackendPort(backendName: writer, queue: queue)
            try await controller.attach(port)
            writePorts.append(port)
        }
        prepared = (filterName, reader, writer, [readPort] + writePorts)
        let targets = writePorts.map { PortTarget(port: $0) }
        if plan.copyMode == .writeBlocking { filterState.startWriteBlocking(targets: targets) }
        running.withLock { $0 = (filterState, targets) }
        defer { stoppedAtCut.store(true, ordering: .releasing) }

        switch plan.sync {
        case _ where plan.committedLayers != nil:
            // What a layer above the base holds (depth from the source below their count).
            let layers = plan.committedLayers!.count
            let state = try await controller.state(of: plan.source)
            var offset: UInt64 = 0
            while offset < size {
                let extent = try await state.chainBlockStatus(offsetBytes: offset, maxLengthBytes: size - offset)
                guard extent.lengthBytes > 0 else { break }
                if extent.isAllocated, let depth = extent.depth, depth < layers { map.mark(offsetBytes: offset, lengthBytes: extent.lengthBytes) }
                offset += extent.lengthBytes
            }
        case .full:
            // Everything the source reads, except ranges that read as zeros on both sides (as
            // mirror_dirty_init with a zero-initialised target): a fresh target stays sparse.
            let sourceState = try await controller.state(of: plan.source)
            var offset: UInt64 = 0
            while offset < size {
                let extent = try await sourceState.chainBlockStatus(offsetBytes: offset, maxLengthBytes: size - offset)
                guard extent.lengthBytes > 0 else {
                    map.mark(offsetBytes: offset, lengthBytes: size - offset)
                    break
                }
                var length = extent.lengthBytes
                if extent.isZero && !extent.isData {
                    let onTarget = try await targetState.chainBlockStatus(offsetBytes: offset, maxLengthBytes: length)
                    length = max(min(length, onTarget.lengthBytes), 1)
                    if !(onTarget.isZero && !onTarget.isData) { map.mark(offsetBytes: offset, lengthBytes: length) }
                } else {
                    map.mark(offsetBytes: offset, lengthBytes: length)
                }
                offset += length
            }
        case .none: break
        case .top:
            // What the source holds itself, not what its backing chain gives it.
            let state = try await controller.state(of: plan.source)
            var offset: UInt64 = 0
            while offset < size {
                let extent = try await state.blockStatusOrData(offsetBytes: offset, maxLengthBytes: size - offset)
                guard extent.lengthBytes > 0 else { break }
                if extent.isAllocated { map.mark(offsetBytes: offset, lengthBytes: extent.lengthBytes) }
                offset += extent.lengthBytes
            }
        }

        // Up to `inFlight` copies at once (QEMU's MAX_IN_FLIGHT), each of up to `bufferBytes`.
        let buffer = AlignedBuffer(count: plan.bufferBytes * Self.maxInFlight)
        // The job's reads land on the source; the guest's there too, through the filter.
        let pacer = JobPacer(controller: controller, node: plan.source)
        let chunksPerCopy = max(1, plan.bufferBytes / Int(plan.granularity))
        var copied: UInt64 = 0
        var ready = false
        var pivoting = false
        let control = controller.control
        var cursor = 0
        while true {
            await context.pausePoint()
            if await context.isCancelled { return }
            if !pivoting, await context.finishesWithoutPivot {
                // block-job-cancel of a READY mirror: as mirror_run, the target catches up with
                // the source first (write-blocking, older writes waited out, the map emptied), so
                // it ends as an exact copy of the source at that moment, flushed below.
                finishWithoutPivot = true
                filterState.startWriteBlocking(targets: targets)
                await controller.barrier()
                pivoting = true
            }
            if ready && !pivoting && stopAtCut.load(ordering: .acquiring) {
                // The gates are closed: nothing dirties the map any more; empty it and stop.
                pivoting = true
                finishWithoutPivot = true
            }
            if ready && !pivoting && completeRequested.load(ordering: .acquiring) {
                // From here every guest write reaches the target before it completes; the
                // barrier waits out the ones that started before, which only marked the map.
                filterState.startWriteBlocking(targets: targets)
                await controller.barrier()
                pivoting = true
            }
            // Runs of dirty chunks, each up to the buffer, claimed (cleared) before they are copied.
            var runs: [(offset: UInt64, length: Int)] = []
            let inFlight = await pacer.concurrency(upTo: Self.maxInFlight)
            while runs.count < inFlight, let first = map.next(from: cursor) ?? map.next(from: 0) {
                var count = 0
                while count < chunksPerCopy, first + count < map.bitCount, map.take(first + count) { count += 1 }
                cursor = first + max(count, 1)
                guard count > 0 else { continue }
                let offset = UInt64(first) * plan.granularity
                runs.append((offset, Int(min(UInt64(count) * plan.granularity, size - offset))))
            }
            guard !runs.isEmpty else {
                if pivoting { break }
                if !ready {
                    ready = true
                    await context.setProgress(current: copied, total: copied)
                    await context.becomeReady()
                }
                await Task(executorPreference: control) { await control.sleep(untilNs: MonotonicClock.now() + 5_000_000) }.value
                continue
            }
            let writer = writePorts[0]
            let bufferBytes = plan.bufferBytes
            let failures = await withTaskGroup(of: (status: IOStatus, isRead: Bool, run: (offset: UInt64, length: Int)).self) { group in
                for (index, run) in runs.enumerated() {
                    let slice = buffer.slice(from: index * bufferBytes, count: run.length)
                    group.addTask {
                        let read = await readPort.submit(BlockRequest(operation: .read, offsetBytes: run.offset, lengthBytes: run.length, buffer: slice))
                        guard read.isOK else { return (read, true, run) }
                        return (await writer.submit(BlockRequest(operation: .write, offsetBytes: run.offset, lengthBytes: run.length, buffer: slice)),
                                false, run)
                    }
                }
                var failures: [(status: IOStatus, isRead: Bool, run: (offset: UInt64, length: Int))] = []
                for await outcome in group where !outcome.status.isOK { failures.append(outcome) }
                return failures
            }
            // As QEMU's mirror: a failed copy is dirty again; `report` fails the job, `stop` pauses
            // it until job-resume, `ignore` goes on (the chunk is copied again later).
            for failure in failures {
                map.mark(offsetBytes: failure.run.offset, lengthBytes: UInt64(failure.run.length))
                let policy = failure.isRead ? plan.onSourceError : plan.onTargetError
                if await context.reportError(failure.status, isRead: failure.isRead, policy: policy) == .report {
                    throw JobError(failure.status)
                }
            }
            if !failures.isEmpty { continue }
            let length = runs.reduce(0) { $0 + $1.length }
            copied += UInt64(length)
            let remaining = UInt64(map.dirtyCount) * plan.granularity
            await context.setProgress(current: copied, total: copied + remaining)
            await pacer.account(bytes: UInt64(length), operations: UInt64(runs.count), speed: await context.speed, control: control)
        }
        let flushed = await writePorts[0].submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
        guard flushed.isOK else { throw JobError(flushed) }
    }

    // MARK: Atomic cancel

    /// The filter and targets, once the job runs and is READY: what an atomic cancel works on.
    var readyParts: (filter: MirrorTopNodeState, targets: [any BlockTarget])? { running.withLock { $0 } }

    /// The cut is made (every gate closed, nothing inside): copy the rest and end.
    func requestStopAtCut() { stopAtCut.store(true, ordering: .releasing) }

    var hasStoppedAtCut: Bool { stoppedAtCut.load(ordering: .acquiring) }

    /// The pivot, one transaction: the job's backends and the filter go and every user of the
    /// replaced node moves to the target. Without a pivot (block-job-cancel of a READY job) only
    /// the filter and backends go.
    public func commit() async throws {
        guard let prepared else { return }
        self.prepared = nil
        for port in prepared.ports { await controller.detach(port) }
        var edits: [GraphEdit] = [.removeBackend(prepared.reader), .removeBackend(prepared.writer), .removeFilter(prepared.filter)]
        if !finishWithoutPivot {
            edits.append(.replace(node: plan.replaces, with: plan.target))
            // An active commit's committed layers leave the chain; implicit ones leave the graph.
            edits += (plan.committedLayers ?? []).filter { $0.hasPrefix("#") }.map { .removeNode($0) }
        }
        try await controller.apply(edits)
    }

    public func abort() async {
        guard let prepared else { return }
        self.prepared = nil
        for port in prepared.ports { await controller.detach(port) }
        _ = try? await controller.apply([.removeBackend(prepared.reader), .removeBackend(prepared.writer), .removeFilter(prepared.filter)])
    }
}

/// The job's port on the target for one queue, as the filter writes it in write-blocking mode.
struct PortTarget: BlockTarget {
    let port: BackendPort

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus { await port.submit(request) }
}
