import StrataGraph

/// QEMU's `copy-before-write` filter (block/copy-before-write.c): before a guest write,
/// write-zeroes or discard changes a chunk of `file` for the first time, the chunk's old data is
/// copied to `target`. `target` then holds, with what `file` still has unchanged, the image as it
/// was when the filter went in: what a backup copies from and what `snapshot-access` reads.
///
/// Options: `file`, `target` (node names), `on-cbw-error` (`break-guest-write`, the default: a
/// failed copy fails the guest write; `break-snapshot`: the guest write goes on and later
/// snapshot reads fail). blockdev-backup inserts one above its source.
public enum CopyBeforeWriteFilter {
    public static let descriptor = DriverDescriptor(name: "copy-before-write", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try CopyBeforeWriteConfiguration(parsing: &reader)
    }
}
