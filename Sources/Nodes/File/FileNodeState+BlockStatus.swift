import CStrataShim
import Glibc
import StrataGraph

/// The file node's allocation map, from SEEK_DATA/SEEK_HOLE as QEMU's file-posix find_allocation:
/// a hole reads as zeros and is not data; both are this layer's own (a protocol has no backing),
/// and the host offset is the guest offset. lseek does no I/O, so it runs on the caller's thread.
extension FileNodeState: BlockStatusQuerying {
    public func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let end = sizeBytes
        guard offsetBytes < end, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: true, hostOffset: offsetBytes)
        }
        let limit = min(maxLengthBytes, end - offsetBytes)
        func extent(_ length: UInt64, data: Bool) -> BlockStatusExtent {
            BlockStatusExtent(lengthBytes: min(length, limit), isData: data, isZero: !data, isAllocated: true, hostOffset: offsetBytes)
        }
        let dataStart = lseek(fd, off_t(offsetBytes), strata_seek_data())
        if dataStart < 0 {
            // ENXIO: no data from here to the end of the file. Anything else (a file system
            // without SEEK_DATA): QEMU's answer, everything is data.
            return errno == ENXIO ? extent(end - offsetBytes, data: false) : extent(limit, data: true)
        }
        if UInt64(dataStart) > offsetBytes { return extent(UInt64(dataStart) - offsetBytes, data: false) }
        let holeStart = lseek(fd, off_t(offsetBytes), strata_seek_hole())
        // A hole that starts before the offset means the file changed between the two calls.
        guard holeStart >= 0, UInt64(holeStart) > offsetBytes else { return extent(limit, data: true) }
        return extent(UInt64(holeStart) - offsetBytes, data: true)
    }
}
