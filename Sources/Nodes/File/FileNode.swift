import StrataGraph

/// QEMU's `file` protocol driver (file-posix) for regular files, with all I/O on the queue
/// executor's io_uring ring.
public enum FileNode {
    public static let descriptor = DriverDescriptor(name: "file") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try FileNodeConfiguration(parsing: &reader)
    }
}
