import StrataGraph
import StrataRuntime

/// QEMU's `snapshot-access` driver (block/snapshot-access.c): reads the image its `file`, a
/// copy-before-write node, had when that filter went in, while the guest keeps writing through
/// the filter: image fleecing, exported over NBD for a pull-mode backup. Read-only.
public enum SnapshotAccessFilter {
    public static let descriptor = DriverDescriptor(name: "snapshot-access") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try SnapshotAccessConfiguration(parsing: &reader)
    }
}
