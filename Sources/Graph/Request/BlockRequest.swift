/// What a request asks of a node. Block status and allocation queries join this list with the
/// format drivers.
public enum BlockOperation: UInt8, Sendable, CaseIterable {
    case read
    case write
    case writeZeroes
    case discard
    case flush
    /// Reads the range into the pipe whose write end is `pipeFd` instead of into memory: a
    /// zero-copy path for front ends that pass the data on to a socket (the NBD server). Nodes
    /// that cannot splice the range answer ENOTSUP before moving anything, and the caller reads
    /// normally; any other failure may leave part of the range in the pipe, so the caller then
    /// discards the pipe.
    case spliceRead

    public var isWrite: Bool { self == .write || self == .writeZeroes || self == .discard }
}

/// Request flags with QEMU's meaning (BDRV_REQ_*).
public struct RequestFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Force unit access: the write is durable when it completes.
    public static let fua = RequestFlags(rawValue: 1 << 0)
    /// Write-zeroes may deallocate the range.
    public static let mayUnmap = RequestFlags(rawValue: 1 << 1)
    /// Write-zeroes must fail rather than fall back to writing zero buffers.
    public static let noFallback = RequestFlags(rawValue: 1 << 2)
    /// Store the data compressed (BDRV_REQ_WRITE_COMPRESSED): whole clusters of a format that
    /// can; other nodes refuse it with ENOTSUP.
    public static let compressed = RequestFlags(rawValue: 1 << 3)
    /// The write stores what reads of the range return already (copy-on-read, streaming): the
    /// writer needs only the `writeUnchanged` permission (BDRV_REQ_WRITE_UNCHANGED).
    public static let writeUnchanged = RequestFlags(rawValue: 1 << 4)
}

/// The one request value every node sees (the roadmap's unified request object). A small value
/// type: it travels by copy from device to protocol driver, so nothing is allocated per request.
public struct BlockRequest: Sendable {
    public var operation: BlockOperation
    public var offsetBytes: UInt64
    public var lengthBytes: Int
    public var buffer: IOBuffer
    public var flags: RequestFlags
    /// Who the request is for: a scheduling policy maps it to a tenant. Device queues set their
    /// index, the lab its tenant's; 0 otherwise.
    public var tag: UInt32
    /// Monotonic time the device accepted the request.
    public var submitNs: UInt64
    /// The write end of the pipe a `spliceRead` fills; -1 otherwise.
    public var pipeFd: Int32
    /// What a format node issued this request for (blkdebug's events); `.none` for guest data.
    public var debugEvent: DebugEvent

    /// Builds the request as given: a malformed one (negative length, a buffer shorter than a read
    /// or write, an overflowing range) is the node's to refuse with EINVAL (`validatedEnd`), since
    /// requests come from guests and clients.
    @inlinable
    public init(operation: BlockOperation, offsetBytes: UInt64, lengthBytes: Int, buffer: IOBuffer = .empty,
                flags: RequestFlags = [], tag: UInt32 = 0, submitNs: UInt64 = 0, pipeFd: Int32 = -1,
                debugEvent: DebugEvent = .none) {
        self.operation = operation
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
        self.buffer = buffer
        self.flags = flags
        self.tag = tag
        self.submitNs = submitNs
        self.pipeFd = pipeFd
        self.debugEvent = debugEvent
    }

    /// The end of the byte range, or nil when offset + length overflows.
    @inlinable public var endBytes: UInt64? {
        let (end, overflow) = offsetBytes.addingReportingOverflow(UInt64(lengthBytes))
        return overflow ? nil : end
    }
}
