import StrataGraph

/// raw is transparent (QEMU's BDRV_BLOCK_RAW): the child answers, shifted by the window offset.
extension RawNodeState: BlockStatusQuerying {
    func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let child = self.child.current
        let window = windowSize(childSizeBytes: child.sizeBytes)
        guard offsetBytes < window, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: true)
        }
        let length = min(maxLengthBytes, window - offsetBytes)
        var extent = try await child.blockStatusOrData(offsetBytes: offsetBytes + configuration.offsetBytes, maxLengthBytes: length)
        if extent.hostOffset == nil { extent.hostOffset = offsetBytes + configuration.offsetBytes }
        // Whatever the child is, raw answers for its whole window itself.
        extent.isAllocated = true
        return extent
    }
}
