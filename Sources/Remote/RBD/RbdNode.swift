import StrataGraph

/// QEMU's `rbd` protocol driver: an image in a Ceph cluster, through librbd's asynchronous API.
/// Completions come back on librbd's own threads and resume the request on the queue executor
/// that issued it (design/remote.md). Options as QEMU's BlockdevOptionsRbd: `pool`, `namespace`,
/// `image`, `snapshot` (read-only), `conf`, `user`, `server` (a list of {host, port}),
/// `auth-client-required` (a list of cephx, none); or QEMU's `rbd:pool/image[@snap][:key=value]...`
/// filename.
public enum RbdNode {
    public static let descriptor = DriverDescriptor(name: "rbd", filenamePrefixes: ["rbd:"]) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try RbdNodeConfiguration(parsing: &reader)
    }
}
