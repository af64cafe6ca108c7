import StrataFilters
import StrataGraph
import StrataRuntime
import Synchronization

/// blockdev-backup (QEMU's block/backup.c): copies the source as it was when the job started
/// into the target, while the guest keeps writing. A copy-before-write filter goes in above the
/// source, in the same graph version as the bitmap's freeze: from then on the guest never changes
/// a chunk the backup still needs before the filter copied it to the target, and the job copies
/// the rest. `sync`: full (everything), top (what the source holds itself), incremental or bitmap
/// (what the bitmap marks), none (only what the guest overwrites: fleecing, until cancelled).
public final class BlockBackupJob: JobDriver, @unchecked Sendable {
    // `prepared`, `frozen` and `remaining` are touched by the job's own steps only (run, then
    // commit or abort, which the Job actor runs one at a time).
    public enum Sync: String, Sendable {
        case full
        case top
        case none
        case incremental
        case bitmap
    }

    /// What happens to the bitmap at the end (QEMU's BitmapSyncMode).
    public enum BitmapMode: String, Sendable {
        /// Cleared of what was copied if the job succeeds; unchanged otherwise.
        case onSuccess = "on-success"
        case never
        /// Cleared of what was copied, whether the job succeeds or not.
        case always
    }

    public struct Plan: Sendable {
        public let source: String
        public let target: String
        public let sync: Sync
        public let bitmap: DirtyBitmap?
        public let bitmapMode: BitmapMode
        public let filterName: String?
        public var onSourceError: JobErrorPolicy = .report
        public var onTargetError: JobErrorPolicy = .report

        public init(source: String, target: String, sync: Sync, bitmap: DirtyBitmap?, bitmapMode: BitmapMode, filterName: String?) {
            self.source = source
            self.target = target
            self.sync = sync
            self.bitmap = bitmap
            self.bitmapMode = bitmapMode
            self.filterName = filterName
        }
    }

    /// Copies in flight at once, each a run of chunks of at most `copyBytes`.
    static let maxInFlight = 8
    static let copyBytes = 1 << 20

    public let plan: Plan
    let controller: GraphController
    private var prepared: (filter: String, reader: String, writer: String, ports: [BackendPort])?
    /// The bitmap's bits at the start, and the chunks still to copy.
    private var frozen: AtomicBitmap?
    private var remaining: AtomicBitmap?

    public init(plan: Plan, controller: GraphController) {
        self.plan = plan
        self.controller = controller
    }

    public var type: JobType { .backup }

    public func run(_ context: JobContext) async throws {
        let id = await context.id
        if let bitmap = plan.bitmap {
            guard let bits = await controller.freeze(bitmap) else { throw JobError(bitmap.refusal() ?? "Bitmap is in use") }
            frozen = bits
        }
        var filter: [String: JSONValue] = ["driver": .string("copy-before-write"), "target": .string(plan.target)]
        if let name = plan.filterName { filter["node-name"] = .string(name) }
        // The job reads the source below the filter and writes the target, from queue 0.
        let reader = "#backup-\(id)-source"
        let writer = "#backup-\(id)-target"
        let report = try await controller.apply([
            .insertFilterAbove(node: plan.source, filter: .object(filter)),
            .addBackend(BackendEntry(name: reader, nodeName: plan.source, writable: false, shareWrites: true)),
            .addBackend(BackendEntry(name: writer, nodeName: plan.target, writable: true, shareWrites: true)),
        ])
        guard let filterName = report.addedNodes.first, let filterState = try await controller.state(of: filterName) as? CopyBeforeWriteNodeState else {
            throw JobError("backup: the filter was not added")
        }
        prepared = (filterName, reader, writer, [])
        // Writes that started before the filter went in land before the job reads anything.
        await controller.barrier()
        let readPort = BackendPort(backendName: reader, queue: controller.queues[0])
        let writePort = BackendPort(backendName: writer, queue: controller.queues[0])
        try await controller.attach(readPort)
        try await controller.attach(writePort)
        prepared = (filterName, reader, writer, [readPort, writePort])

        let size = filterState.sizeBytes
        let chunk = filterState.chunkBytes
        let wanted = AtomicBitmap(sizeBytes: size, granularity: chunk)
        let sourceState = try await controller.state(of: plan.source)
        switch plan.sync {
        case .full: wanted.markAll()
        case .none: break
        case .top:
            var offset: UInt64 = 0
            while offset < size {
                let extent = try await sourceState.blockStatusOrData(offsetBytes: offset, maxLengthBytes: size - offset)
                guard extent.lengthBytes > 0 else { break }
                if extent.isAllocated { wanted.mark(offsetBytes: offset, lengthBytes: extent.lengthBytes) }
                offset += extent.lengthBytes
            }
        case .incremental, .bitmap:
            if let frozen { wanted.merge(frozen) }
        }
        remaining = wanted
        if plan.sync == .none {
            // Fleecing: the filter copies what the guest overwrites, until the job is cancelled.
            await context.setProgress(current: 0, total: size)
            let control = controller.control
            while await !context.isCancelled {
                await context.pausePoint()
                await context.setProgress(current: filterState.copiedBytes, total: size)
                await Task(executorPreference: control) { await control.sleep(untilNs: MonotonicClock.now() + 20_000_000) }.value
            }
            return
        }
        filterState.restrictPending(to: wanted)
        let total = UInt64(wanted.dirtyCount) * chunk
        var done: UInt64 = 0
        await context.setProgress(current: 0, total: total)
        let control = controller.control
        let chunksPerCopy = max(1, Self.copyBytes / Int(chunk))
        // The job's reads land on the source; the guest's there too, through the filter.
        let pacer = JobPacer(controller: controller, node: plan.source)
        let reads = SourceReads()
        var cursor = 0
        while let first = wanted.next(from: cursor) {
            await context.pausePoint()
            if await context.isCancelled { return }
            // Up to `maxInFlight` runs of wanted chunks.
            var runs: [ClosedRange<Int>] = []
            var next: Int? = first
            let inFlight = await pacer.concurrency(upTo: Self.maxInFlight)
            while runs.count < inFlight, let start = next {
                var last = start
                while last - start + 1 < chunksPerCopy, last + 1 < wanted.bitCount, wanted.isSet(last + 1) { last += 1 }
                runs.append(start...last)
                next = wanted.next(from: last + 1)
            }
            let failures = await withTaskGroup(of: CopyOutcome?.self) { group -> [CopyOutcome] in
                for run in runs {
                    group.addTask {
                        let (_, failure) = await filterState.copyPending(run) { offset, length in
                            await Self.copy(offset: offset, length: length, source: sourceState, from: readPort, to: writePort, reads: reads)
                        }
                        return failure
                    }
                }
                var failures: [CopyOutcome] = []
                for await failure in group { if let failure { failures.append(failure) } }
                return failures
            }
            // As QEMU's backup_loop: `report` fails the job; `ignore` and `stop` (after
            // job-resume) copy the chunks again, which are still pending in the filter.
            for failure in failures {
                let policy = failure.failedReading ? plan.onSourceError : plan.onTargetError
                if await context.reportError(failure.status, isRead: failure.failedReading, policy: policy) == .report {
                    throw JobError(failure.status)
                }
            }
            if !failures.isEmpty {
                cursor = runs[0].lowerBound
                continue
            }
            for run in runs {
                for bit in run { _ = wanted.take(bit) }
                done += min(size, UInt64(run.upperBound + 1) * chunk) - UInt64(run.lowerBound) * chunk
            }
            await context.setProgress(current: done, total: total)
            cursor = runs.last!.upperBound + 1
            let copied = runs.reduce(0) { $0 + UInt64($1.count) } * chunk
            await pacer.account(bytes: copied, operations: reads.take(), speed: await context.speed, control: control)
        }
        let flushed = await writePort.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
        guard flushed.isOK else { throw JobError(flushed) }
    }

    /// One run, source to target, extent by extent: ranges that read as zeros become
    /// write-zeroes, so the target stays sparse where the source is (QEMU's block-copy asks block
    /// status the same way).
    private static func copy(offset: UInt64, length: Int, source: any NodeState, from reader: BackendPort, to writer: BackendPort,
                             reads: SourceReads) async -> CopyOutcome {
        let end = offset + UInt64(length)
        var position = offset
        var buffer: AlignedBuffer?
        while position < end {
            let extent = try? await source.chainBlockStatus(offsetBytes: position, maxLengthBytes: end - position)
            // Without an answer (or an empty one) the rest is copied as data.
            let known = extent.map { $0.lengthBytes } ?? 0
            let piece = Int(known > 0 ? min(end - position, known) : end - position)
            let status: IOStatus
            if let extent, known > 0, extent.isZero, !extent.isData {
                status = await writer.submit(BlockRequest(operation: .writeZeroes, offsetBytes: position, lengthBytes: piece))
            } else {
                let memory = buffer ?? AlignedBuffer(count: length)
                buffer = memory
                reads.count()
                let read = await reader.submit(BlockRequest(operation: .read, offsetBytes: position, lengthBytes: piece,
                                                            buffer: memory.slice(from: 0, count: piece)))
                guard read.isOK else { return CopyOutcome(status: read, failedReading: true) }
                status = await writer.submit(BlockRequest(operation: .write, offsetBytes: position, lengthBytes: piece,
                                                          buffer: memory.slice(from: 0, count: piece)))
            }
            guard status.isOK else { return CopyOutcome(status: status, failedReading: false) }
            position += UInt64(piece)
        }
        return .ok
    }

    /// Success: the bitmap keeps only what was written since the start (unless `never`).
    public func commit() async throws {
        if let bitmap = plan.bitmap, frozen != nil {
            await controller.thaw(bitmap, on: plan.source, keeping: plan.bitmapMode == .never ? frozen : nil)
        }
        try await removeFilter()
    }

    /// Failure or cancel: the bitmap gets back its bits (`always`: those not copied).
    public func abort() async {
        if let bitmap = plan.bitmap, frozen != nil {
            var keep = frozen
            if plan.bitmapMode == .always, let frozen, let remaining {
                let uncopied = AtomicBitmap(sizeBytes: frozen.sizeBytes, granularity: frozen.granularity)
                var bit = frozen.next(from: 0)
                while let set = bit {
                    if remaining.isSet(Int(UInt64(set) * frozen.granularity / remaining.granularity)) { uncopied.setBits(set...set) }
                    bit = frozen.next(from: set + 1)
                }
                keep = uncopied
            }
            await controller.thaw(bitmap, on: plan.source, keeping: keep)
        }
        try? await removeFilter()
    }

    private func removeFilter() async throws {
        guard let prepared else { return }
        self.prepared = nil
        for port in prepared.ports { await controller.detach(port) }
        try await controller.apply([.removeBackend(prepared.reader), .removeBackend(prepared.writer), .removeFilter(prepared.filter)])
    }
}

/// The reads the job's copies sent to the source (from several copy tasks at once), for the
/// pacer to tell them from the guest's.
final class SourceReads: Sendable {
    private let counter = Atomic<UInt64>(0)

    func count() { counter.add(1, ordering: .relaxed) }

    func take() -> UInt64 { counter.exchange(0, ordering: .relaxed) }
}
