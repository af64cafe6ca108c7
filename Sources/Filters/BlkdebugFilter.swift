import StrataGraph

/// QEMU's `blkdebug` (block/blkdebug.c), for fault injection: requests pass to `image`, except
/// those an `inject-error` rule matches, which fail with the rule's errno.
///
/// Options: `image` (the child), `inject-error` (a list of rules: `event`, `iotype`, `errno`
/// (default EIO), `sector` (the rule matches requests covering that 512-byte sector; default any),
/// `once` (the rule fires one time, on whichever queue meets it first), `immediately` (accepted)),
/// and `align` (accepted). Of QEMU's events Strata fires those of its own request path:
/// `read_aio` (reads), `write_aio` (writes, write-zeroes, discards) and `flush_to_disk` (flushes);
/// rules naming events of QEMU's drivers' internals (`l2_load`, ...) are refused, not ignored.
public enum BlkdebugFilter {
    public static let descriptor = DriverDescriptor(name: "blkdebug", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try BlkdebugConfiguration(parsing: &reader)
    }
}
