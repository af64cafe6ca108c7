import Glibc
import StrataGraph
import StrataNBD
import StrataRuntime

/// An nbd node's state shared by all queues: what the server advertised when the node opened,
/// and the connections. With NBD_FLAG_CAN_MULTI_CONN every queue gets a connection of its own,
/// opened lazily on that queue's executor; without it all queues share one, owned by the first
/// queue that asked (queue 0 as the engine builds instances), and other queues' requests hop to
/// it. The socket the open negotiated on is handed to the first connection, not reopened.
final class NBDClientNodeState: NodeState {
    /// Largest write-zeroes fallback write and largest TRIM/WRITE_ZEROES/BLOCK_STATUS length
    /// asked at once (32-bit lengths; 1 GiB keeps every alignment).
    static let zeroBufferBytes = 64 << 10
    static let maxUnpayloadedBytes: UInt64 = 1 << 30

    let nodeName: String
    let endpoint: NBDEndpoint
    let negotiation: NBDClientNegotiation
    let readOnly: Bool
    let flags: NBDTransmissionFlags
    /// Requests must be aligned to this (NBD_INFO_BLOCK_SIZE's minimum).
    let minimumBlockBytes: UInt64
    /// Largest READ/WRITE payload, a multiple of the minimum.
    let maximumPayloadBytes: Int
    /// The ID of base:allocation when the server selected it; block status is opaque without it.
    let allocationContextID: UInt32?
    /// Zeros for write-zeroes on a server without WRITE_ZEROES; never written after init.
    let zeroes: IOBuffer
    let sizeBytes: UInt64

    private let controlExecutor: QueueExecutor
    private let clock: any IOClock
    private let connections = Locked<[Int: NBDClientConnection]>([:])
    private let unclaimedSocket: Locked<RingSocket?>
    /// The key of the connection the control executor owns, for block status before any queue exists.
    private static let controlKey = -1

    private init(nodeName: String, endpoint: NBDEndpoint, negotiation: NBDClientNegotiation, readOnly: Bool,
                 socket: RingSocket, context: OpenContext) {
        self.nodeName = nodeName
        self.endpoint = endpoint
        self.negotiation = negotiation
        self.readOnly = readOnly
        self.flags = negotiation.transmissionFlags
        let constraints = negotiation.blockSize ?? .default
        self.minimumBlockBytes = UInt64(constraints.minimum)
        // Servers may advertise more than the spec's 32 MiB; stay within what a request length holds.
        let maximum = min(Int(constraints.maximumPayload), Int(Int32.max))
        self.maximumPayloadBytes = max(Int(constraints.minimum), maximum - maximum % Int(constraints.minimum))
        self.allocationContextID = negotiation.metaContexts.first { $0.name == NBDMetaContext.baseAllocation.rawValue }?.id
        let zeroMemory = UnsafeMutableRawPointer.allocate(byteCount: Self.zeroBufferBytes, alignment: 4096)
        zeroMemory.initializeMemory(as: UInt8.self, repeating: 0, count: Self.zeroBufferBytes)
        self.zeroes = IOBuffer(base: zeroMemory, count: Self.zeroBufferBytes)
        self.sizeBytes = negotiation.sizeBytes
        self.controlExecutor = context.controlExecutor
        self.clock = context.clock
        self.unclaimedSocket = Locked(socket)
    }

    deinit {
        zeroes.base?.deallocate()
        if let socket = unclaimedSocket.withLock({ $0 }) { Glibc.close(socket.fd) }
    }

    /// Resolves the server, connects and negotiates on the control executor's ring.
    static func open(name: String, configuration: NBDClientNodeConfiguration, context: OpenContext) async throws -> NBDClientNodeState {
        let addresses: [NBDSocketAddress]
        do {
            addresses = try configuration.server.resolve()
        } catch {
            throw GraphError.openFailed(node: name, reason: "Could not connect to NBD server \(configuration.server): \(error)")
        }
        let endpoint = NBDEndpoint(nodeName: name, server: configuration.server, addresses: addresses,
                                   exportName: configuration.exportName,
                                   reconnectDelayNs: UInt64(configuration.reconnectDelaySeconds) * 1_000_000_000)
        let socket: RingSocket
        let negotiation: NBDClientNegotiation
        do {
            (socket, negotiation) = try await Task(executorPreference: context.controlExecutor) {
                try await NBDDialer.dial(endpoint) { _ in }
            }.value
        } catch {
            throw GraphError.openFailed(node: name, reason: "\(error)")
        }
        // QEMU refuses a writable node on a read-only export rather than degrading silently.
        if negotiation.transmissionFlags.contains(.readOnly) && !configuration.readOnly {
            Glibc.close(socket.fd)
            throw GraphError.openFailed(node: name, reason: "NBD export '\(configuration.exportName)' on \(configuration.server) is read-only; open the node read-only")
        }
        if let blockSize = negotiation.blockSize, negotiation.sizeBytes % UInt64(blockSize.minimum) != 0 {
            Glibc.close(socket.fd)
            throw GraphError.openFailed(node: name, reason: "NBD server \(configuration.server): export size \(negotiation.sizeBytes) is not a multiple of its minimum block size \(blockSize.minimum)")
        }
        return NBDClientNodeState(nodeName: name, endpoint: endpoint, negotiation: negotiation, readOnly: configuration.readOnly,
                                  socket: socket, context: context)
    }

    /// The connection requests from `queue` go to, made on first use.
    func connection(for queue: QueueContext) -> NBDClientConnection {
        let key = flags.contains(.canMultiConn) ? queue.index : 0
        return connection(key: key, executor: queue.executor, clock: queue.clock)
    }

    /// Any open connection (for control-path queries), else one on the control executor.
    func anyConnection() -> NBDClientConnection {
        if let existing = connections.withLock({ table in table[0] ?? table.values.first }) { return existing }
        return connection(key: Self.controlKey, executor: controlExecutor, clock: clock)
    }

    private func connection(key: Int, executor: QueueExecutor, clock: any IOClock) -> NBDClientConnection {
        connections.withLock { table in
            if let existing = table[key] { return existing }
            let adopted = unclaimedSocket.withLock { socket in
                defer { socket = nil }
                return socket
            }
            let created = NBDClientConnection(endpoint: endpoint, expected: negotiation, executor: executor, clock: clock, adopting: adopted)
            table[key] = created
            return created
        }
    }

    /// Connections made so far (tests check the connection model with it).
    var connectionCount: Int { connections.withLock { $0.count } }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        NBDClientNodeInstance(state: self, connection: connection(for: queue), queue: queue)
    }

    /// Disconnects every connection (NBD_CMD_DISC, then hang up).
    func close() async {
        let all = connections.withLock { table in
            defer { table.removeAll() }
            return Array(table.values)
        }
        for connection in all { await connection.close() }
        if let socket = unclaimedSocket.withLock({ socket in defer { socket = nil }; return socket }) {
            Glibc.close(socket.fd)
        }
    }
}
