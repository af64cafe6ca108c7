import Glibc

/// A system call on an image file failed: names the call, the path and errno's meaning.
public struct Qcow2FileIOError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let path: String
    public let errno: Int32

    public init(operation: String, path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String {
        "Could not \(operation) '\(path)': \(String(cString: strerror(errno)))"
    }
}
