/// Block status of a node with its backing chain below it, as qemu-img map and NBD's
/// base:allocation see an image: the first layer that answers for the range itself gives the
/// extent, with its depth; a range no layer answers for reads as zeros (depth: the bottom layer
/// reached). Layers are found through `BackingChainLayer.backingLayer`.
extension NodeState {
    public func chainBlockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        guard offsetBytes < sizeBytes, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: false, depth: 0)
        }
        var layer: any NodeState = self
        var length = min(maxLengthBytes, sizeBytes - offsetBytes)
        var depth = 0
        while true {
            var extent = try await layer.blockStatusOrData(offsetBytes: offsetBytes, maxLengthBytes: length)
            extent.depth = depth
            if extent.lengthBytes == 0 || extent.isAllocated { return extent }
            // No backing node, or one that ends before the offset: the range reads as zeros (a
            // place in the file the layer gave, such as unallocated subclusters', is kept, as QEMU does).
            guard let next = (layer as? any BackingChainLayer)?.backingLayer?.state, offsetBytes < next.sizeBytes else {
                extent.isZero = true
                extent.isData = false
                return extent
            }
            extent.hostOffset = nil
            length = min(extent.lengthBytes, next.sizeBytes - offsetBytes)
            layer = next
            depth += 1
        }
    }
}
