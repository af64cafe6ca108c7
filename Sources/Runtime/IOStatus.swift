import Glibc

/// The outcome of one I/O: success, or a POSIX errno. A plain value so the hot path never
/// allocates an error box.
public struct IOStatus: Equatable, Sendable, CustomStringConvertible {
    public let errno: Int32

    @inlinable public init(errno: Int32) { self.errno = errno }

    public static let ok = IOStatus(errno: 0)
    public static let invalid = IOStatus(errno: EINVAL)
    public static let ioError = IOStatus(errno: EIO)
    public static let notSupported = IOStatus(errno: ENOTSUP)
    public static let readOnly = IOStatus(errno: EROFS)
    public static let noSpace = IOStatus(errno: ENOSPC)

    @inlinable public var isOK: Bool { errno == 0 }

    /// Converts a kernel result (negative errno on failure) into a status.
    @inlinable public init(kernelResult: Int32) { self.errno = kernelResult < 0 ? -kernelResult : 0 }

    public var description: String { isOK ? "ok" : String(cString: strerror(errno)) + " (errno \(errno))" }
}

/// An error carrying an errno, for control-path calls that throw.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}
