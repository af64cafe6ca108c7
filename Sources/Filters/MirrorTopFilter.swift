import StrataGraph

/// QEMU's `mirror_top` filter (block/mirror.c): what blockdev-mirror inserts above its source.
/// Reads and flushes pass through; every write, write-zeroes and discard marks its range dirty
/// once it completed on the source (so the job copies it again), and in write-blocking mode is
/// also written to the target before it completes (QEMU's active mirroring). Internal, as QEMU's;
/// its only option is `file`.
public enum MirrorTopFilter {
    public static let descriptor = DriverDescriptor(name: "mirror_top", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try MirrorTopConfiguration(parsing: &reader)
    }
}
