import StrataGraph
import StrataNBD
import StrataRuntime

/// Block status from NBD_CMD_BLOCK_STATUS in the base:allocation context, as QEMU's nbd driver
/// reports it: a hole is not data, the zero flag reads as zeros, and the node answers for every
/// range itself (allocated), having no backing. Without the context everything is data.
extension NBDClientNodeState: BlockStatusQuerying {
    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        guard offsetBytes < sizeBytes, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: true)
        }
        let limit = min(maxLengthBytes, sizeBytes - offsetBytes)
        guard allocationContextID != nil else { return .opaqueData(lengthBytes: limit) }
        // Ask for whole blocks: the server answers in units of its minimum block size.
        let alignment = minimumBlockBytes
        let start = offsetBytes - offsetBytes % alignment
        var length = min(limit + (offsetBytes - start), Self.maxUnpayloadedBytes)
        length = (length + alignment - 1) / alignment * alignment
        length = min(length, sizeBytes - start)
        let (status, descriptor) = await anyConnection().execute(.blockStatus, flags: [.requestOne], offset: start, length: UInt32(length))
        guard status.isOK else { throw SystemError("NBD block status at \(offsetBytes) on node '\(nodeName)'", errno: status.errno) }
        guard let descriptor, UInt64(descriptor.length) > offsetBytes - start else { return .opaqueData(lengthBytes: min(limit, alignment)) }
        let extentLength = min(UInt64(descriptor.length) - (offsetBytes - start), limit)
        let hole = descriptor.flags & NBDMetaContext.stateHole != 0
        let zero = descriptor.flags & NBDMetaContext.stateZero != 0
        return BlockStatusExtent(lengthBytes: extentLength, isData: !hole, isZero: zero, isAllocated: true)
    }
}
