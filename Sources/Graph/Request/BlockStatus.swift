/// What one stretch of a node's address space holds, as QEMU's bdrv_co_block_status reports it:
/// the extent starts at the queried offset and runs `lengthBytes` with the same status.
public struct BlockStatusExtent: Sendable, Equatable {
    public var lengthBytes: UInt64
    /// Reads return data stored in the image (BDRV_BLOCK_DATA).
    public var isData: Bool
    /// Reads return zeros (BDRV_BLOCK_ZERO); a hole is zero and not data.
    public var isZero: Bool
    /// This layer answers for the range itself instead of deferring to its backing node
    /// (BDRV_BLOCK_ALLOCATED).
    public var isAllocated: Bool
    /// Where the range lives in the layer's file, when it has such a place (BDRV_BLOCK_OFFSET_VALID).
    public var hostOffset: UInt64?
    /// How many backing layers down the answer came from; nodes leave it nil, chains fill it in.
    public var depth: Int?

    public init(lengthBytes: UInt64, isData: Bool, isZero: Bool, isAllocated: Bool, hostOffset: UInt64? = nil, depth: Int? = nil) {
        self.lengthBytes = lengthBytes
        self.isData = isData
        self.isZero = isZero
        self.isAllocated = isAllocated
        self.hostOffset = hostOffset
        self.depth = depth
    }

    /// What a node that cannot tell must be assumed to hold: data it answers for itself.
    public static func opaqueData(lengthBytes: UInt64, hostOffset: UInt64? = nil) -> BlockStatusExtent {
        BlockStatusExtent(lengthBytes: lengthBytes, isData: true, isZero: false, isAllocated: true, hostOffset: hostOffset)
    }
}

/// A node state that can say what its address space holds. A control-path query (map, compare,
/// convert), not a request: it runs on whatever executor calls it and may block briefly.
public protocol BlockStatusQuerying: NodeState {
    /// The extent starting at `offsetBytes`, at most `maxLengthBytes` long and never past the
    /// node's end. Callers pass an offset below `sizeBytes` and a positive maximum.
    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent
}

extension NodeState {
    /// The node's block status, or opaque data for a node that does not implement the query.
    public func blockStatusOrData(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        if let querying = self as? any BlockStatusQuerying {
            return try await querying.blockStatus(offsetBytes: offsetBytes, maxLengthBytes: maxLengthBytes)
        }
        let end = sizeBytes
        let length = offsetBytes < end ? min(maxLengthBytes, end - offsetBytes) : 0
        return .opaqueData(lengthBytes: length)
    }
}
