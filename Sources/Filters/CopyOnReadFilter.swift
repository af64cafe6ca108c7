import StrataGraph

/// QEMU's `copy-on-read` filter driver (block/copy-on-read.c): data that reads of its `file`
/// child fetch from the backing chain is written into the child's own image, so later reads find
/// it there.
///
/// Options: `file` (the filtered child, a layer of a backing chain such as qcow2) and `bottom`
/// (a node name in the child's backing chain: only data held by layers above it, `bottom`
/// included, is copied; without it, everything the child does not hold itself is copied).
public enum CopyOnReadFilter {
    public static let descriptor = DriverDescriptor(name: "copy-on-read", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try CopyOnReadConfiguration(parsing: &reader)
    }
}
