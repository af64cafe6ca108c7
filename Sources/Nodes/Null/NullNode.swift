import StrataGraph

/// QEMU's `null-co`: a node of a given size that stores nothing. Writes succeed and are dropped;
/// reads leave the buffer as it is unless `read-zeroes` is set (QEMU's default, kept for speed);
/// `latency-ns` makes every request wait that long on the queue's clock.
public enum NullNode {
    public static let descriptor = DriverDescriptor(name: "null-co") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try NullNodeConfiguration(parsing: &reader)
    }
}
