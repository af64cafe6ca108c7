import StrataGraph

/// QEMU's `nbd` protocol driver: a client of an NBD server's export, with every socket operation
/// on a queue executor's io_uring ring. See design/nbd-client.md.
public enum NBDClientNode {
    public static let descriptor = DriverDescriptor(name: "nbd", filenamePrefixes: NBDURI.schemes.map { $0 + "://" }) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try NBDClientNodeConfiguration(parsing: &reader)
    }
}
