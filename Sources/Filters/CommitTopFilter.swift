import StrataGraph

/// QEMU's `commit_top` filter (block/commit.c): what block-commit inserts above the top layer it
/// commits. It forwards every request, and shares every permission on its child, so the job may
/// write into the base below while the chain above still reads through it. Not meant for
/// blockdev-add (QEMU keeps it internal); its only option is `file`.
public enum CommitTopFilter {
    public static let descriptor = DriverDescriptor(name: "commit_top", isFilter: true) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try CommitTopConfiguration(parsing: &reader)
    }
}
