import CStrataShim
import Glibc
import StrataRuntime

/// One resolved socket address (a sockaddr's bytes) and how to connect a stream socket to it.
struct NBDSocketAddress: Sendable, Hashable {
    let family: Int32
    let bytes: [UInt8]

    /// A new stream socket of this address's family, CLOEXEC so children never inherit it.
    func makeSocket() throws(SystemError) -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        if family != AF_UNIX {
            // Request headers are small writes that must not wait for Nagle (QEMU sets it too).
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        return fd
    }

    /// Connects `fd` with IORING_OP_CONNECT on the calling queue executor's ring; 0 or -errno.
    /// The kernel reads the address while the SQE runs, so it lives in a heap copy until then.
    nonisolated(nonsending) func connect(_ fd: Int32) async -> Int32 {
        guard let executor = QueueExecutor.current else { preconditionFailure("NBD connect must run on a queue executor") }
        let count = bytes.count
        let address = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16)
        defer { address.deallocate() }
        bytes.withUnsafeBytes { address.copyMemory(from: $0.baseAddress!, byteCount: count) }
        let sockaddrPointer = address.assumingMemoryBound(to: sockaddr.self)
        return await executor.perform { io_uring_prep_connect($0, fd, sockaddrPointer, socklen_t(count)) }
    }
}
