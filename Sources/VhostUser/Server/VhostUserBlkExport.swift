import Glibc
import StrataDevices
import StrataGraph
import StrataRuntime

/// One vhost-user-blk export: a Unix socket a front end connects to, the node behind it, and the
/// front end currently attached (one at a time, as qemu-storage-daemon allows). The accept loop
/// and the connection's messages run on the control executor; virtqueue i runs on queue executor
/// (i mod queues) as a `VirtioBlkDevice` attached to the graph under the export's id.
public final class VhostUserBlkExport: Sendable {
    /// seg_max: data buffers per request the device accepts (QEMU's default queue size less the
    /// header and status descriptors).
    static let segmentMax = 126

    public let options: VhostUserBlkExportOptions
    let controller: GraphController
    private let logger: @Sendable (String) -> Void

    private struct State {
        var listener: RingListener?
        var acceptLoop: Task<Void, Never>?
        var connection: VhostUserConnection?
        var connectionEnded: CheckedContinuation<Void, Never>?
        var connectionFD: Int32 = -1
        var nextNumber = 0
        var stopping = false
    }
    private let state = Locked(State())

    init(options: VhostUserBlkExportOptions, controller: GraphController, log: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.controller = controller
        self.logger = log
    }

    func log(_ message: String) { logger(message) }

    /// Front ends connected over the export's life.
    public var connectionCount: Int { state.withLock { $0.nextNumber } }
    /// Whether a front end is attached now.
    public var isConnected: Bool { state.withLock { $0.connection != nil } }

    /// Claims the node (a backend named after the export), then listens. A stale socket file at
    /// the path is replaced, as QEMU does.
    func start() async throws {
        if let problem = options.problem { throw VhostUserExportError(problem) }
        try await controller.apply(json: .object(["type": "backend-add", "data": .object([
            "id": .string(options.id), "node-name": .string(options.nodeName),
            "writable": .bool(options.writable), "share-rw": .bool(true),
        ])]))
        let listener: RingListener
        do {
            var status = stat()
            if lstat(options.socketPath, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK { unlink(options.socketPath) }
            listener = try RingListener.unix(path: options.socketPath)
        } catch {
            _ = try? await controller.apply(json: .object(["type": "backend-del", "data": .object(["id": .string(options.id)])]))
            throw VhostUserExportError("vhost-user-blk export '\(options.id)': \(error)")
        }
        let control = controller.control
        let loop = ThreadAffineExecutors.startTask(serving: control) { await self.acceptLoop(listener) }
        state.withLock { state in
            state.listener = listener
            state.acceptLoop = loop
        }
    }

    private func acceptLoop(_ listener: RingListener) async {
        while true {
            let socket: RingSocket
            do { socket = try await listener.accept() } catch {
                if state.withLock({ $0.stopping }) { return }
                log("vhost-user-blk export '\(options.id)': accept: \(error)")
                await controller.control.sleep(untilNs: MonotonicClock.now() + 100_000_000)
                continue
            }
            let connection: VhostUserConnection? = state.withLock { state in
                guard !state.stopping, state.connection == nil else { return nil }
                let connection = VhostUserConnection(export: self, socket: socket, number: state.nextNumber)
                state.nextNumber += 1
                state.connection = connection
                state.connectionFD = socket.fd
                return connection
            }
            guard let connection else {
                log("vhost-user-blk export '\(options.id)': a second front end was refused (one at a time)")
                try? await socket.close()
                continue
            }
            ThreadAffineExecutors.startTask(serving: controller.control) { await connection.run() }
        }
    }

    /// Called by the connection once it has stopped its queues and closed its socket.
    func connectionEnded(_ connection: VhostUserConnection) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            guard state.connection === connection else { return nil }
            state.connection = nil
            state.connectionFD = -1
            defer { state.connectionEnded = nil }
            return state.connectionEnded
        }
        waiter?.resume()
    }

    /// Stops listening, disconnects the front end (its queues finish what they hold first), and
    /// gives the node back.
    func stop() async {
        let (listener, loop) = state.withLock { state in
            state.stopping = true
            defer {
                state.listener = nil
                state.acceptLoop = nil
            }
            return (state.listener, state.acceptLoop)
        }
        if let listener {
            // A waiting accept is woken by shutdown, not by close.
            listener.shutdown()
            await loop?.value
            listener.close()
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let connected: Bool = state.withLock { state in
                guard state.connection != nil else { return false }
                state.connectionEnded = continuation
                // The connection's pending receive sees the end of the stream and winds down.
                Glibc.shutdown(state.connectionFD, Int32(SHUT_RDWR))
                return true
            }
            if !connected { continuation.resume() }
        }
        _ = try? await controller.apply(json: .object(["type": "backend-del", "data": .object(["id": .string(options.id)])]))
    }

    // MARK: Queues

    /// The size of the node the export serves now (a mirror's pivot may have moved it).
    func capacityBytes() async -> UInt64 {
        let node = await controller.model.backends[options.id]?.nodeName ?? options.nodeName
        return (try? await controller.state(of: node))?.sizeBytes ?? 0
    }

    /// Starts serving virtqueue `index` on its queue executor; nil when the export's backend is gone.
    func startQueue(_ index: Int, queue: SplitVirtqueue, base: UInt16, eventIndex: Bool, writeCache: Bool, inflight: VirtqueueInflight?,
                    kickFD: Int32, callFD: Int32) async -> VhostUserVringRunner? {
        let context = controller.queues[index % controller.queues.count]
        var settings = VirtioBlkDevice.Settings()
        settings.segmentsPerRequest = Self.segmentMax
        settings.eventIndex = eventIndex
        settings.nextAvailableIndex = base
        settings.usedIndex = queue.loadUsedIndexAcquire()
        settings.readOnly = !options.writable
        settings.logicalBlockSize = options.logicalBlockSize
        settings.deviceID = options.id
        settings.inflight = inflight
        // The runner asks `needsNotification` after every completion and batch.
        settings.defersUsedIndex = inflight == nil
        settings.tenantTag = options.tenantTagBase &+ UInt32(index)
        let device = VirtioBlkDevice(queue: context, backendName: options.id, capacityBytes: await capacityBytes(), virtqueue: queue,
                                     settings: settings)
        await device.setWriteCache(writeCache)
        if device.resubmittedCount > 0 {
            log("vhost-user-blk export '\(options.id)': virtqueue \(index): serving again \(device.resubmittedCount) request(s) left in flight")
        }
        do { try await controller.attach(device) } catch { return nil }
        let runner = VhostUserVringRunner(device: device, index: index, executor: context.executor, kickFD: kickFD, callFD: callFD,
                                          ringSize: queue.size, log: logger)
        await runner.start(device: device)
        return runner
    }

    /// Stops a virtqueue once its requests in flight are done; returns where it resumes.
    func stopQueue(_ runner: VhostUserVringRunner) async -> UInt16 {
        let base = await runner.stop(device: runner.device)
        await controller.detach(runner.device)
        return base
    }
}

/// A vhost-user export that cannot be added: bad options, a node that cannot be claimed, a socket
/// that cannot be bound.
public struct VhostUserExportError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
