import CStrataShim
import Glibc
import StrataDevices
import StrataVhostUser

/// The inflight region of a connection (INFLIGHT_SHMFD): one `VirtqueueInflight` per queue, in a
/// memfd the front end keeps and hands to the next back end after a restart. Made here for
/// GET_INFLIGHT_FD, or adopted from SET_INFLIGHT_FD.
final class VhostUserInflightRegion {
    let fd: Int32
    let byteCount: Int
    let queueCount: Int
    let queueSize: Int
    private let base: UnsafeMutableRawPointer

    /// A new, zeroed region for `queueCount` queues of `queueSize` entries.
    init(queueCount: Int, queueSize: Int) throws(VhostUserProtocolError) {
        let bytes = queueCount * VirtqueueInflight.regionBytes(queueSize: queueSize)
        let fd = strata_memfd_create("strata-vhost-inflight")
        guard fd >= 0 else { throw VhostUserProtocolError("inflight region: memfd_create: \(String(cString: strerror(-fd)))") }
        guard ftruncate(fd, off_t(bytes)) == 0, let mapped = Self.map(fd, bytes, offset: 0) else {
            close(fd)
            throw VhostUserProtocolError("inflight region of \(bytes) bytes cannot be made")
        }
        self.fd = fd
        byteCount = bytes
        self.queueCount = queueCount
        self.queueSize = queueSize
        base = mapped
    }

    /// The region a front end kept from a predecessor; checked against its file's size.
    init(adopting fd: Int32, description: VhostUserInflight) throws(VhostUserProtocolError) {
        let queueSize = Int(description.queueSize)
        let expected = Int(description.queueCount) * VirtqueueInflight.regionBytes(queueSize: queueSize)
        var status = stat()
        guard description.queueCount >= 1, SplitVirtqueue.isValidSize(queueSize), description.mmapSize == UInt64(expected),
              description.mmapOffset % UInt64(GuestMemory.pageSize) == 0, description.mmapOffset <= UInt64(Int.max) - UInt64(expected),
              fstat(fd, &status) == 0, UInt64(status.st_size) >= description.mmapOffset + UInt64(expected),
              let mapped = Self.map(fd, expected, offset: Int(description.mmapOffset)) else {
            close(fd)
            throw VhostUserProtocolError("SET_INFLIGHT_FD: a region of \(description.mmapSize) bytes at \(description.mmapOffset) for \(description.queueCount) queues of \(queueSize) does not fit its file")
        }
        self.fd = fd
        byteCount = expected
        queueCount = Int(description.queueCount)
        self.queueSize = queueSize
        base = mapped
    }

    deinit {
        munmap(base, byteCount)
        close(fd)
    }

    /// Queue `queue`'s record, when the region has one for a ring of `size` entries.
    func record(queue: Int, size: Int) -> VirtqueueInflight? {
        guard queue < queueCount, size == queueSize else { return nil }
        return VirtqueueInflight(base: base + queue * VirtqueueInflight.regionBytes(queueSize: queueSize), queueSize: queueSize)
    }

    private static func map(_ fd: Int32, _ bytes: Int, offset: Int) -> UnsafeMutableRawPointer? {
        let mapped = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset))
        return mapped == UnsafeMutableRawPointer(bitPattern: -1) ? nil : mapped
    }
}
