import Glibc

/// A permission the file node could not lock because another open file description (usually
/// another process) holds a conflicting lock byte. Worded as QEMU's file-posix.
public struct FileLockError: Error, Equatable, CustomStringConvertible {
    public let node: String
    public let path: String
    /// QEMU's message, e.g. `Failed to get "write" lock` or `Failed to get shared "write" lock`.
    public let message: String
    /// EAGAIN for a conflict; another errno when the lock call itself failed.
    public let errno: Int32

    public init(node: String, path: String, message: String, errno: Int32) {
        self.node = node
        self.path = path
        self.message = message
        self.errno = errno
    }

    public var description: String {
        // QEMU adds strerror only when the failure is not a plain conflict (raw_lock_error_setg_errno).
        let cause = errno == EAGAIN ? "" : ": " + String(cString: strerror(errno))
        return "\(node): \(message)\(cause)\nIs another process using the image [\(path)]?"
    }
}
