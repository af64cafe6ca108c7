import CStrataShim
import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

/// One client connection, bound to one queue executor: the handshake, then the transmission
/// phase, all socket I/O through that executor's ring and every request submitted into the graph
/// through the export's port for the same queue, so a request never changes thread.
///
/// Requests are pipelined by workers (`NBDRequestWorker`), each serving one request at a time. A
/// worker takes the receive turn, parses the next request from the receive buffer (reading the
/// socket only when the buffer runs dry) and reads a WRITE's payload into its own buffer, then
/// hands the turn on and serves its request while the next worker parses. Replies are combined:
/// the first worker with a reply sends every reply queued meanwhile in one sendmsg. Workers are
/// added while none is waiting for the receive turn, up to `maxWorkers`, so a receive is always
/// outstanding while the client has fewer requests than that in flight.
actor NBDConnection {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    nonisolated let socket: RingSocket
    nonisolated let number: Int
    let queue: QueueContext
    let server: NBDServer

    static let receiveCapacity = 64 << 10
    static let maxWorkers = 64
    /// Reads this long or longer look for holes to send as OFFSET_HOLE chunks; shorter ones are
    /// one data chunk, since the block status query would cost more than the zeros it saves.
    static let sparseReadMinimum: UInt32 = 64 << 10
    /// BLOCK_STATUS answers at most this many extents per context (the client asks again).
    static let maxDescriptors = 8192
    /// IOV_MAX: the most iovecs one sendmsg takes.
    static let maxIovecsPerSend = 1024

    let memory: NBDConnectionMemory
    var receiveBuffer: UnsafeMutableRawPointer { memory.receiveBuffer }
    var receiveStart = 0
    var receiveEnd = 0

    enum Phase { case handshake, transmission, closing }
    var phase = Phase.handshake
    var session: NBDNegotiatedSession?
    var export: NBDServerExport?
    /// The export's x-tenant, copied at the handshake so the request path reads one integer.
    var tenantTag: UInt32 = 0
    var port: BackendPort?

    var workers: [NBDRequestWorker] = []
    var liveWorkers = 0
    var receiving = false
    var receiveWaiters: [ParkedContinuation<Bool>] = []
    var sending = false
    /// Requests read and not yet answered (their replies not queued).
    var requestsInService = 0
    var sendFailed = false
    var pendingReplies: [Int] = []
    var sendingBatch: [Int] = []
    var sendIovecs: UnsafeMutablePointer<iovec> { memory.sendIovecs }
    var message: UnsafeMutablePointer<msghdr> { memory.message }

    init(socket: RingSocket, number: Int, queue: QueueContext, server: NBDServer) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.socket = socket
        self.number = number
        self.queue = queue
        self.server = server
        memory = NBDConnectionMemory(receiveCapacity: Self.receiveCapacity, iovecCapacity: Self.maxWorkers * NBDRequestWorker.maxIovecs)
        workers.reserveCapacity(Self.maxWorkers)
        receiveWaiters.reserveCapacity(Self.maxWorkers)
        pendingReplies.reserveCapacity(Self.maxWorkers)
        sendingBatch.reserveCapacity(Self.maxWorkers)
    }

    /// Negotiates, then starts the first worker; the last worker to stop closes the connection.
    func run() async {
        guard let negotiated = await handshake(), let served = server.exports.served(named: negotiated.export.name) else {
            await finish()
            return
        }
        session = negotiated
        export = served
        port = served.ports[queue.index]
        tenantTag = served.options.tenantTag
        phase = .transmission
        server.handshakeFinished(number, exportID: served.options.id)
        startWorker()
    }

    /// Stops reading requests (server shutdown): requests already read still get their replies.
    func stopReceiving() async {
        guard phase != .closing else { return }
        if phase == .handshake {
            // The handshake's receive is woken by the shutdown below and ends the connection.
            try? await socket.shutdown(Int32(SHUT_RD))
            return
        }
        close()
        if receiving { try? await socket.shutdown(Int32(SHUT_RD)) }
    }

    // MARK: Ending

    func finish() async {
        phase = .closing
        server.connectionEnded(number)
        try? await socket.close()
    }
}
