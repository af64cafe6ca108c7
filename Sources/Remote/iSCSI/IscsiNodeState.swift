import Glibc
import StrataGraph
import StrataRuntime
import Synchronization

/// An iscsi node's shared state: what the LUN said at open, the control session that asked (kept
/// for block status), and one session per queue, logged in on that queue's first request.
final class IscsiNodeState: NodeState {
    /// Largest write of zeros sent at once where WRITE SAME cannot be used.
    static let zeroBufferBytes = 1 << 20

    let nodeName: String
    let location: IscsiLocation
    let readOnly: Bool
    let geometry: IscsiLunGeometry
    /// Zeros for WRITE SAME's one block and for writes of zeros; never written after init.
    let zeroes: IOBuffer
    /// Cleared when the target refuses WRITE SAME(16): zeros are then written (QEMU's has_write_same).
    let writeSameWorks = Atomic<Bool>(true)
    private let control: IscsiSessionHost
    private let sessions = Locked<[Int: IscsiSession]>([:])

    private init(nodeName: String, location: IscsiLocation, readOnly: Bool, geometry: IscsiLunGeometry, control: IscsiSessionHost) {
        self.nodeName = nodeName
        self.location = location
        self.readOnly = readOnly
        self.geometry = geometry
        self.control = control
        let memory = UnsafeMutableRawPointer.allocate(byteCount: Self.zeroBufferBytes, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: Self.zeroBufferBytes)
        zeroes = IOBuffer(base: memory, count: Self.zeroBufferBytes)
    }

    deinit { zeroes.base?.deallocate() }

    /// Logs in on the control executor and reads the LUN's geometry.
    static func open(name: String, location: IscsiLocation, readOnly: Bool, context: OpenContext) async throws -> IscsiNodeState {
        let session = try IscsiSession(location: location, executor: context.controlExecutor, log: logger(name))
        let host = IscsiSessionHost(session)
        do {
            let geometry = try await host.geometry()
            if geometry.writeProtected && !readOnly {
                throw IscsiError("\(session.description) is write-protected; open the node read-only")
            }
            return IscsiNodeState(nodeName: name, location: location, readOnly: readOnly, geometry: geometry, control: host)
        } catch {
            await host.close()
            throw error
        }
    }

    static func logger(_ nodeName: String) -> @Sendable (String) -> Void {
        { text in
            let line = "strata: iscsi node '\(nodeName)': \(text)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
        }
    }

    var sizeBytes: UInt64 { geometry.sizeBytes }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        IscsiNodeInstance(state: self, session: session(for: queue), queue: queue)
    }

    /// The session of `queue`, made (not yet logged in) on first use.
    private func session(for queue: QueueContext) -> IscsiSession {
        sessions.withLock { table in
            if let existing = table[queue.index] { return existing }
            // Creating a context fails only without memory: the options were checked at open.
            guard let created = try? IscsiSession(location: location, executor: queue.executor, log: Self.logger(nodeName)) else {
                preconditionFailure("cannot create an iSCSI context for \(location.target)")
            }
            table[queue.index] = created
            return created
        }
    }

    /// Sessions logged in so far, the control session included (tests check the session model).
    var sessionCount: Int { sessions.withLock { $0.count } + 1 }

    /// Logs every session out, each on its own executor.
    func close() async {
        let all = sessions.withLock { table in
            defer { table.removeAll() }
            return Array(table.values)
        }
        for session in all { await IscsiSessionHost(session).close() }
        await control.close()
    }
}

extension IscsiNodeState: BlockStatusQuerying {
    /// GET LBA STATUS on a thin-provisioned LUN (LBPME); any other LUN is all data, as in QEMU.
    /// Unmapped blocks read as zeros only where the LUN says so (LBPRZ).
    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let size = sizeBytes
        guard offsetBytes < size, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: false, hostOffset: nil)
        }
        let length = min(maxLengthBytes, size - offsetBytes)
        guard geometry.thinProvisioned else {
            return BlockStatusExtent(lengthBytes: length, isData: true, isZero: false, isAllocated: true, hostOffset: nil)
        }
        let blockBytes = UInt64(geometry.blockBytes)
        let status = try await control.lbaStatus(fromLBA: offsetBytes / blockBytes)
        let end = min((status.lba + status.blockCount) * blockBytes, offsetBytes + length)
        return BlockStatusExtent(lengthBytes: end - offsetBytes, isData: status.mapped,
                                 isZero: !status.mapped && geometry.unmappedReadZero, isAllocated: status.mapped, hostOffset: nil)
    }
}
