import StrataGraph

/// QEMU's `throttle` filter driver (block/throttle.c): limits the I/O passing to its `file` child
/// with a throttle group, shared with other throttle nodes that name the same group.
///
/// Options: `file` (the filtered child), `throttle-group` (a group name; by default a private group
/// named after the node) and `limits` (ThrottleLimits keys; given for an existing group, they
/// replace its limits, like QEMU's block_set_io_throttle).
public enum ThrottleFilter {
    public static let descriptor = DriverDescriptor(name: "throttle", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try ThrottleConfiguration(parsing: &reader)
    }

    /// Where groups live in `OpenContext.sharedObjects`.
    public static func sharedObjectName(group: String) -> String { "throttle-group:" + group }
}
