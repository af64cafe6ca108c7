import CStrataShim
import Glibc

/// What O_DIRECT needs aligned on one file: the file offset and length (`request`) and the memory
/// address (`memory`). Both are powers of two.
struct FileAlignment: Sendable, Equatable {
    let request: Int
    let memory: Int

    init(request: Int, memory: Int) {
        precondition(request > 0 && request & (request - 1) == 0, "O_DIRECT request alignment \(request) is a power of two")
        precondition(memory > 0 && memory & (memory - 1) == 0, "O_DIRECT memory alignment \(memory) is a power of two")
        self.request = request
        self.memory = memory
    }

    /// Buffered I/O: the page cache takes any byte range from any address.
    static let buffered = FileAlignment(request: 1, memory: 1)

    /// QEMU's raw_probe_alignment for files it cannot ask: the smallest size whose O_DIRECT read at
    /// offset 0 the kernel does not refuse with EINVAL. When even one byte passes (an empty file,
    /// or a file system that does not enforce alignment) the answer is unknown, and like QEMU this
    /// falls back to the largest candidate rather than trusting it. Blocking: call on the control thread.
    static func probe(fd: Int32) -> FileAlignment {
        let maxAlignment = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))
        let candidates = [1, 512, 1024, 2048, 4096]
        guard let buffer = strata_alloc_aligned(2 * maxAlignment, maxAlignment, -1) else {
            return FileAlignment(request: maxAlignment, memory: maxAlignment)
        }
        defer { strata_free_aligned(buffer, 2 * maxAlignment, -1) }

        var request = maxAlignment
        for size in candidates where readIsAccepted(fd: fd, into: buffer, length: size) {
            request = size == 1 ? maxAlignment : size
            break
        }
        var memory = request
        for shift in candidates where readIsAccepted(fd: fd, into: buffer + shift, length: maxAlignment) {
            memory = shift == 1 ? request : shift
            break
        }
        return FileAlignment(request: request, memory: memory)
    }

    /// QEMU's raw_is_io_aligned: only EINVAL says "misaligned"; any other failure is not about alignment.
    private static func readIsAccepted(fd: Int32, into buffer: UnsafeMutableRawPointer, length: Int) -> Bool {
        pread(fd, buffer, length, 0) >= 0 || errno != EINVAL
    }
}
