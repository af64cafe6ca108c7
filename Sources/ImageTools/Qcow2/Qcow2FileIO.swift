import Glibc
import StrataNodes

/// `Qcow2ImageIO` over a file descriptor with plain blocking pread/pwrite: the offline tools run
/// one request at a time, so a ring would buy nothing. The descriptor is closed on deinit.
public final class Qcow2FileIO: Qcow2ImageIO {
    public let path: String
    private let descriptor: Int32

    /// Opens `path` read-only or read-write; `create` makes (or truncates to empty) the file.
    public init(path: String, writable: Bool, create: Bool = false) throws(Qcow2FileIOError) {
        self.path = path
        var flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC
        if create { flags |= O_CREAT | O_TRUNC }
        let fd = Glibc.open(path, flags, 0o644)
        guard fd >= 0 else { throw Qcow2FileIOError(operation: "open", path: path, errno: Glibc.errno) }
        descriptor = fd
    }

    deinit { Glibc.close(descriptor) }

    public func sizeBytes() async throws -> UInt64 {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw failure("stat") }
        return UInt64(info.st_size)
    }

    /// Blocks on disk usage as QEMU's `actual-size` reports it (allocated 512-byte blocks).
    public func allocatedBytes() throws(Qcow2FileIOError) -> UInt64 {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw failure("stat") }
        return UInt64(info.st_blocks) * 512
    }

    public func read(offset: UInt64, count: Int) async throws -> [UInt8] {
        guard count > 0 else { return [] }
        guard offset <= UInt64(Int64.max) - UInt64(count) else { return [UInt8](repeating: 0, count: count) }
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        let status: Int32 = bytes.withUnsafeMutableBytes { buffer in
            while done < count {
                let result = pread(descriptor, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if result < 0 {
                    if Glibc.errno == EINTR { continue }
                    return Glibc.errno
                }
                // End of file: the rest stays zero.
                if result == 0 { break }
                done += result
            }
            return 0
        }
        guard status == 0 else { throw Qcow2FileIOError(operation: "read", path: path, errno: status) }
        return bytes
    }

    public func write(offset: UInt64, bytes: [UInt8]) async throws {
        guard !bytes.isEmpty else { return }
        guard offset <= UInt64(Int64.max) - UInt64(bytes.count) else { throw Qcow2FileIOError(operation: "write", path: path, errno: EFBIG) }
        var done = 0
        let status: Int32 = bytes.withUnsafeBytes { buffer in
            while done < buffer.count {
                let result = pwrite(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
                if result < 0 {
                    if Glibc.errno == EINTR { continue }
                    return Glibc.errno
                }
                done += result
            }
            return 0
        }
        guard status == 0 else { throw Qcow2FileIOError(operation: "write", path: path, errno: status) }
    }

    public func flush() async throws {
        guard fdatasync(descriptor) == 0 else { throw failure("flush") }
    }

    public func truncate(to sizeBytes: UInt64) async throws {
        guard sizeBytes <= UInt64(Int64.max), ftruncate(descriptor, off_t(sizeBytes)) == 0 else { throw failure("truncate") }
    }

    private func failure(_ operation: String) -> Qcow2FileIOError {
        Qcow2FileIOError(operation: operation, path: path, errno: Glibc.errno)
    }
}
