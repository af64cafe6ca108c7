import StrataGraph

/// QEMU's `blkdebug` (block/blkdebug.c), for fault injection: requests pass to `image`, except
/// those an armed `inject-error` rule matches, which fail with the rule's errno.
///
/// Options: `image` (the child), `inject-error` (rules: `event`, `state`, `iotype`, `errno`
/// (default EIO), `sector`, `once`, `immediately`), `set-state` (rules: `event`, `state`,
/// `new_state`), `config` (a file of `[inject-error]` and `[set-state]` sections) and `align`
/// (accepted). Events are QEMU's names: `read_aio`, `write_aio`, `flush_to_disk` for guest data
/// and the qcow2 metadata events the node above labels its requests with (`DebugEvent`); others
/// are refused, not ignored. Semantics and what is not done: design/reliability.md.
public enum BlkdebugFilter {
    public static let descriptor = DriverDescriptor(name: "blkdebug", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try BlkdebugConfiguration(parsing: &reader)
    }
}
