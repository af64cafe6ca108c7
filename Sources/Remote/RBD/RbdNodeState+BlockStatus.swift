import CRbd
import Glibc
import StrataGraph

extension RbdNodeState: BlockStatusQuerying {
    /// librbd's diff against nothing (rbd_diff_iterate2 from the image's creation, parents
    /// included): what it reports is allocated (data, or zeros where `exists` is false: discarded),
    /// the gaps between are unallocated and read as zeros. It blocks, so it runs off the queues;
    /// one call looks at most 64 MiB ahead.
    public func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let size = sizeBytes
        guard offsetBytes < size, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: false, hostOffset: nil)
        }
        let length = min(maxLengthBytes, size - offsetBytes, 64 << 20)
        let image = UncheckedImage(connection.image)
        let (result, extent): (Int32, DiffExtent?) = await RbdConnection.offQueue {
            var first = DiffExtent?.none
            let result = withUnsafeMutablePointer(to: &first) { pointer in
                rbd_diff_iterate2(image.handle, nil, offsetBytes, length, 1, 1, { offset, length, exists, argument in
                    let found = argument!.assumingMemoryBound(to: DiffExtent?.self)
                    found.pointee = DiffExtent(offset: offset, length: UInt64(length), exists: exists != 0)
                    // Only the first extent matters: stop the walk.
                    return -ECANCELED
                }, pointer)
            }
            return (result, first)
        }
        if result < 0 && result != -ECANCELED { throw RbdError("error reading the allocation of \(connection.description)", result: result) }
        guard let extent else {
            return BlockStatusExtent(lengthBytes: length, isData: false, isZero: true, isAllocated: false, hostOffset: nil)
        }
        if extent.offset > offsetBytes {
            return BlockStatusExtent(lengthBytes: min(extent.offset - offsetBytes, length), isData: false, isZero: true,
                                     isAllocated: false, hostOffset: nil)
        }
        let end = min(extent.offset + extent.length, offsetBytes + length)
        return BlockStatusExtent(lengthBytes: end - offsetBytes, isData: extent.exists, isZero: !extent.exists,
                                 isAllocated: true, hostOffset: nil)
    }
}

private struct DiffExtent: Sendable {
    let offset: UInt64
    let length: UInt64
    let exists: Bool
}
