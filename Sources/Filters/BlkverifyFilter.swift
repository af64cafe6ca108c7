import StrataGraph

/// QEMU's `blkverify` (block/blkverify.c), for testing a driver against a reference: every
/// request goes to both children, `test` (the node under test, whose result the parent gets)
/// and `raw` (a plain image that should hold the same guest data). Reads are compared byte for
/// byte and writes' statuses too; flushes go to `test` only, as QEMU's.
///
/// A mismatch prints QEMU's line ("blkverify: read offset=... bytes=... contents mismatch at
/// offset ...") on standard error. QEMU then exits the process; Strata fails the request with EIO
/// instead, since no request may bring the daemon down. Discard and block status are refused
/// with ENOTSUP, as QEMU's blkverify has neither. Each read allocates its comparison buffer: a
/// test device, not a fast path.
public enum BlkverifyFilter {
    public static let descriptor = DriverDescriptor(name: "blkverify", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try BlkverifyConfiguration(parsing: &reader)
    }
}
