import StrataGraph

/// QEMU's `raw` format: the child `file` seen as is, or through a window (`offset`, `size`).
/// Requests are bounds-checked against the window, shifted by the offset and forwarded.
public enum RawNode {
    public static let descriptor = DriverDescriptor(name: "raw") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try RawNodeConfiguration(parsing: &reader)
    }
}
