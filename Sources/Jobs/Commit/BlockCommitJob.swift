import StrataGraph
import StrataImageTools
import StrataNodes
import StrataRuntime

/// block-commit of an intermediate layer (QEMU's block/commit.c, commit_run): the data the layers
/// from `top` down to just above `base` hold is written into `base`, then the overlay above `top`
/// takes `base` as its backing and names it in its header; the committed layers leave the chain.
/// No guest writes to those layers (they are backing files), so the copy needs no coordination
/// with the guest: ranges they hold read the same through the overlay before and after. As in
/// QEMU, a `commit_top` filter above `top` shares every permission down the chain, so the job
/// may write into `base` under layers that otherwise keep it read-only to others.
public final class BlockCommitJob: JobDriver, @unchecked Sendable {
    // Immutable after init except `prepared`, touched only by the job's own steps, which the Job
    // actor runs one at a time (run, then commit or abort).
    public struct Plan: Sendable {
        /// The node whose backing is `top`; it takes `base` at the pivot.
        public let overlay: String
        public let top: String
        public let base: String
        /// The committed layers, `top` first (they leave the chain).
        public let committed: [String]
        public let backingFile: String
        public let backingFormat: String
        public let filterName: String?
        /// `on-error`.
        public var onError: JobErrorPolicy = .report

        public init(overlay: String, top: String, base: String, committed: [String], backingFile: String, backingFormat: String,
                    filterName: String?) {
            self.overlay = overlay
            self.top = top
            self.base = base
            self.committed = committed
            self.backingFile = backingFile
            self.backingFormat = backingFormat
            self.filterName = filterName
        }
    }

    /// QEMU's COMMIT_BUFFER_SIZE.
    static let chunkBytes = 512 << 10

    public let plan: Plan
    let controller: GraphController
    private var prepared: (filter: String, reader: String, writer: String, ports: [BackendPort])?

    public init(plan: Plan, controller: GraphController) {
        self.plan = plan
        self.controller = controller
    }

    public var type: JobType { .commit }

    public func run(_ context: JobContext) async throws {
        let id = await context.id
        var filter: [String: JSONValue] = ["driver": .string("commit_top")]
        if let name = plan.filterName { filter["node-name"] = .string(name) }
        let report = try await controller.apply([.insertFilterAbove(node: plan.top, filter: .object(filter))])
        guard let filterName = report.addedNodes.first else { throw JobError("commit: the filter was not added") }
        // One backend reads the committed layers' view through the filter, one writes the base;
        // both let everything else go on.
        let reader = "#commit-\(id)-top"
        let writer = "#commit-\(id)-base"
        try await controller.apply([
            .addBackend(BackendEntry(name: reader, nodeName: filterName, writable: false, shareWrites: true)),
            .addBackend(BackendEntry(name: writer, nodeName: plan.base, writable: true, shareWrites: true)),
        ])
        let queue = controller.queues[0]
        let readPort = BackendPort(backendName: reader, queue: queue)
        let writePort = BackendPort(backendName: writer, queue: queue)
        try await controller.attach(readPort)
        try await controller.attach(writePort)
        prepared = (filterName, reader, writer, [readPort, writePort])

        let topState = try await controller.state(of: plan.top)
        let size = topState.sizeBytes
        // The base grows to the top's size first, as commit_run truncates it.
        let baseState = try await controller.state(of: plan.base)
        if baseState.sizeBytes < size {
            guard let qcow2 = baseState as? Qcow2NodeState else { throw JobError("Top image is larger than the base image") }
            try await qcow2.resize(to: size, executor: controller.control)
        }
        let buffer = AlignedBuffer(count: Self.chunkBytes)
        // The job reads through the filter, and so does the guest below the overlay.
        let pacer = JobPacer(controller: controller, node: filterName)
        var offset: UInt64 = 0
        await context.setProgress(current: 0, total: size)
        while offset < size {
            await context.pausePoint()
            if await context.isCancelled { return }
            let extent = try await topState.chainBlockStatus(offsetBytes: offset, maxLengthBytes: min(UInt64(Self.chunkBytes), size - offset))
            guard extent.lengthBytes > 0 else { break }
            let length = Int(extent.lengthBytes)
            // Held by a committed layer (depth counts from top): copy; below them it is the base's already.
            let copiedChunk = extent.isAllocated && extent.depth.map { $0 < plan.committed.count } == true
            if copiedChunk {
                _ = await pacer.concurrency(upTo: 1)
                let slice = buffer.slice(from: 0, count: length)
                let read = await readPort.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length, buffer: slice))
                let written = read.isOK
                    ? await writePort.submit(BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: length, buffer: slice)) : read
                if !written.isOK {
                    // As QEMU's commit_run: `ignore` and `stop` (after job-resume) retry the chunk.
                    let action = await context.reportError(written, isRead: !read.isOK, policy: plan.onError)
                    if action == .report { throw JobError(written) }
                    continue
                }
            }
            offset += UInt64(length)
            await context.setProgress(current: offset, total: size)
            if copiedChunk {
                await pacer.account(bytes: UInt64(length), operations: 1, speed: await context.speed, control: controller.control)
            }
        }
        // What was written is durable before the overlay names the base.
        let flushed = await writePort.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
        guard flushed.isOK else { throw JobError(flushed) }
    }

    /// The pivot, one transaction: the backends and the filter go, the overlay's backing becomes
    /// the base, and implicit committed layers nobody uses go; then the overlay's header.
    public func commit() async throws {
        guard let prepared else { return }
        for port in prepared.ports { await controller.detach(port) }
        self.prepared = nil
        var options = try await controller.model.node(plan.overlay).options
        options["backing"] = .string(plan.base)
        var edits: [GraphEdit] = [.removeBackend(prepared.reader), .removeBackend(prepared.writer), .removeFilter(prepared.filter),
                                  .reopen(.object(options))]
        edits += plan.committed.filter { $0.hasPrefix("#") }.map { .removeNode($0) }
        try await controller.apply(edits)
        guard let overlay = try await controller.state(of: plan.overlay) as? Qcow2NodeState,
              let file = try await controller.state(of: BlockStreamJob.fileChild(of: plan.overlay, in: controller.model)) as? FileNodeState else {
            return
        }
        let (name, format) = (plan.backingFile, plan.backingFormat)
        _ = try await overlay.whileAllocationLocked(on: controller.control) {
            try Qcow2BackingNameUpdate.update(path: file.path, backingFile: name, backingFormat: format)
        }
    }

    public func abort() async {
        guard let prepared else { return }
        self.prepared = nil
        for port in prepared.ports { await controller.detach(port) }
        _ = try? await controller.apply([.removeBackend(prepared.reader), .removeBackend(prepared.writer), .removeFilter(prepared.filter)])
    }
}
