import StrataGraph

/// QEMU's `null-co` and `null-aio`: a node of a given size that stores nothing. Writes succeed and
/// are dropped; reads leave the buffer as it is unless `read-zeroes` is set (QEMU's default, kept
/// for speed); `latency-ns` makes every request wait that long on the queue's clock.
///
/// `null-co` answers while routing, never suspending. `null-aio` completes every request through
/// the queue's ring (an io_uring NOP), so a benchmark on it measures the suspend-and-resume path a
/// real I/O takes, without a device.
public enum NullNode {
    public static let descriptor = DriverDescriptor(name: "null-co") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try NullNodeConfiguration(parsing: &reader, throughRing: false)
    }

    public static let aioDescriptor = DriverDescriptor(name: "null-aio") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try NullNodeConfiguration(parsing: &reader, throughRing: true)
    }
}
