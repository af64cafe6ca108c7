import StrataGraph

/// null-co stores nothing: with read-zeroes every read is zeros; without it reads leave the
/// buffer as it was, which callers must treat as data of unknown content.
extension NullNodeState: BlockStatusQuerying {
    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let length = offsetBytes < sizeBytes ? min(maxLengthBytes, sizeBytes - offsetBytes) : 0
        let zeroes = configuration.readZeroes
        return BlockStatusExtent(lengthBytes: length, isData: !zeroes, isZero: zeroes, isAllocated: true, hostOffset: offsetBytes)
    }
}
