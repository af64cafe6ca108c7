import StrataGraph
import StrataImageTools
import StrataNodes
import StrataRuntime

/// block-stream (QEMU's block/stream.c): copies into `top` the data its backing chain holds above
/// `base`, then makes `base` top's backing (none without a base) and writes its name into the
/// image. As in QEMU since 6.0, the copy goes through a copy-on-read filter inserted above `top`,
/// whose range lock keeps a guest write and the copy of the same range apart, so a write the
/// guest makes meanwhile is never overwritten by older data from the chain. The job reads the
/// whole device through the filter, chunk by chunk, with pause points between chunks.
public final class BlockStreamJob: JobDriver, @unchecked Sendable {
    // Immutable after init except `prepared`, which only the job's own steps touch, one at a
    // time (run, then commit or abort: the Job actor orders them).
    public struct Plan: Sendable {
        public let top: String
        /// The new backing node, nil to stream the whole chain.
        public let base: String?
        /// The lowest layer copied from (just above `base`); nil when no layer lies between top
        /// and base, and there is nothing to do.
        public let bottom: String?
        /// What the image's header names as backing file after the stream, and its format.
        public let backingFile: String?
        public let backingFormat: String?
        public let filterName: String?
        /// The layers between top and base, top first.
        public let intermediates: [String]
        /// `on-error`.
        public var onError: JobErrorPolicy = .report
        /// Those of them added implicitly (`#blockN`): removed with the stream.
        public var implicitIntermediates: [String] { intermediates.filter { $0.hasPrefix("#") } }

        public init(top: String, base: String?, bottom: String?, backingFile: String?, backingFormat: String?,
                    filterName: String?, intermediates: [String]) {
            self.top = top
            self.base = base
            self.bottom = bottom
            self.backingFile = backingFile
            self.backingFormat = backingFormat
            self.filterName = filterName
            self.intermediates = intermediates
        }
    }

    /// QEMU's STREAM_CHUNK.
    static let chunkBytes = 512 << 10

    public let plan: Plan
    let controller: GraphController
    private var prepared: (filter: String, backend: String, port: BackendPort)?

    public init(plan: Plan, controller: GraphController) {
        self.plan = plan
        self.controller = controller
    }

    public var type: JobType { .stream }

    public func run(_ context: JobContext) async throws {
        let id = await context.id
        let size = try await controller.state(of: plan.top).sizeBytes
        guard let bottom = plan.bottom else {
            await context.setProgress(current: size, total: size)
            return
        }
        // The filter above top, and a backend of the job's own to read through it on queue 0.
        var filter: [String: JSONValue] = ["driver": .string("copy-on-read"), "bottom": .string(bottom)]
        if let name = plan.filterName { filter["node-name"] = .string(name) }
        let report = try await controller.apply([.insertFilterAbove(node: plan.top, filter: .object(filter))])
        guard let filterName = report.addedNodes.first else { throw JobError("stream: the filter was not added") }
        let backend = "#stream-\(id)"
        // The job only reads, and lets the guest do anything meanwhile (QEMU's stream job shares all).
        try await controller.apply([.addBackend(BackendEntry(name: backend, nodeName: filterName, writable: false, shareWrites: true))])
        let queue = controller.queues[0]
        let port = BackendPort(backendName: backend, queue: queue)
        try await controller.attach(port)
        prepared = (filterName, backend, port)

        let buffer = AlignedBuffer(count: Self.chunkBytes)
        var offset: UInt64 = 0
        // The job reads through the filter, and so does the guest.
        let pacer = JobPacer(controller: controller, node: filterName)
        await context.setProgress(current: 0, total: size)
        // As QEMU's stream_run: `ignore` goes on past a failed chunk, and the job still fails at
        // the end with the first error; `stop` retries the chunk after job-resume.
        var ignored: IOStatus?
        while offset < size {
            await context.pausePoint()
            if await context.isCancelled { return }
            let length = Int(min(UInt64(Self.chunkBytes), size - offset))
            _ = await pacer.concurrency(upTo: 1)
            let status = await port.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                                        buffer: buffer.slice(from: 0, count: length)))
            if !status.isOK {
                switch await context.reportError(status, isRead: true, policy: plan.onError) {
                case .report: throw JobError(status)
                case .stop: continue
                case .ignore: ignored = ignored ?? status
                }
            }
            offset += UInt64(length)
            await context.setProgress(current: offset, total: size)
            await pacer.account(bytes: UInt64(length), operations: 1, speed: await context.speed, control: controller.control)
        }
        if let ignored { throw JobError(ignored) }
    }

    /// The pivot, one transaction: the filter and the job's backend go, top's backing becomes
    /// base (or none), and implicit layers nobody uses any more go with them; then the header.
    public func commit() async throws {
        guard let prepared else { return }
        await controller.detach(prepared.port)
        var options = try await controller.model.node(plan.top).options
        options["backing"] = plan.base.map { .string($0) } ?? .null
        var edits: [GraphEdit] = [.removeBackend(prepared.backend), .removeFilter(prepared.filter), .reopen(.object(options))]
        edits += plan.implicitIntermediates.map { .removeNode($0) }
        self.prepared = nil
        try await controller.apply(edits)
        guard let state = try await controller.state(of: plan.top) as? Qcow2NodeState,
              let file = try await controller.state(of: Self.fileChild(of: plan.top, in: controller.model)) as? FileNodeState else { return }
        let (name, format) = (plan.backingFile, plan.backingFormat)
        _ = try await state.whileAllocationLocked(on: controller.control) {
            try Qcow2BackingNameUpdate.update(path: file.path, backingFile: name, backingFormat: name == nil ? nil : format)
        }
    }

    /// Cancelled or failed: the filter and the backend go, the chain stays as it was (what was
    /// copied stays copied, as in QEMU: the data is the same).
    public func abort() async {
        guard let prepared else { return }
        self.prepared = nil
        await controller.detach(prepared.port)
        _ = try? await controller.apply([.removeBackend(prepared.backend), .removeFilter(prepared.filter)])
    }

    static func fileChild(of node: String, in model: GraphModel) throws -> String {
        guard let file = model.nodes[node]?.children.first(where: { $0.role == .file }) else {
            throw JobError("Node '\(node)' has no file child")
        }
        return file.nodeName
    }
}
