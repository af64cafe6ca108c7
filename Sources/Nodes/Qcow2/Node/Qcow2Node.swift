import StrataGraph

/// QEMU's `qcow2` format, first slice: reads QEMU's images (v2 and v3, zlib-compressed clusters,
/// zero clusters, a backing node given explicitly); the node is read-only and writes fail with EROFS.
public enum Qcow2Node {
    public static let descriptor = DriverDescriptor(name: "qcow2") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try Qcow2NodeConfiguration(parsing: &reader)
    }
}
