/// What a command does to a node, as the op-blocker table knows it (QEMU's BlockOpType, for the
/// commands Strata has).
public enum NodeOperation: String, Sendable, CaseIterable {
    /// block_resize.
    case resize
    /// blockdev-reopen, or a transaction's reopen.
    case reopen
    /// blockdev-del.
    case delete
    /// x-blockdev-replace, as the node replaced or the replacement.
    case replace
    /// x-insert-filter or x-remove-filter on or above the node.
    case filterEdit = "filter-edit"
    /// block-stream with the node as top or in its chain.
    case stream
    /// block-commit with the node in the committed layers, as base or as the overlay.
    case commit
    /// blockdev-mirror with the node as source or target.
    case mirror
    /// blockdev-create writing into the node.
    case create
    /// blockdev-backup with the node as source or target.
    case backup
}

/// How a job uses a node.
public enum JobNodeRole: String, Sendable {
    /// block-stream's top: the node copied into and relinked at the pivot.
    case streamTop = "stream top"
    /// A layer block-stream copies from and drops.
    case streamIntermediate = "stream intermediate"
    /// A layer block-commit copies from and drops.
    case commitSource = "commit source"
    /// The base block-commit writes into.
    case commitTarget = "commit target"
    /// The node above the committed layers, relinked to the base at the pivot.
    case commitOverlay = "commit overlay"
    /// The node blockdev-mirror copies from; its users move to the target at the pivot.
    case mirrorSource = "mirror source"
    /// The node blockdev-mirror copies into.
    case mirrorTarget = "mirror target"
    /// The node blockdev-create writes an image into.
    case createTarget = "create target"
    /// The node blockdev-backup copies from; the guest keeps writing it through the filter.
    case backupSource = "backup source"
    /// The node blockdev-backup copies into.
    case backupTarget = "backup target"
}

/// The op blockers, as data: while a job uses a node in a role, which operations other commands
/// may still do to that node. Anything not listed is refused, naming the job and the node
/// ("Node 'x' is busy: block device is in use by block job: stream (job 's0')"). As QEMU's
/// block_job_add_bdrv, a job blocks every operation on the nodes it uses; the table is where a
/// job that can live with one says so.
public enum OpBlockers {
    public static let allowed: [JobNodeRole: Set<NodeOperation>] = [
        .streamTop: [],
        .streamIntermediate: [],
        .commitSource: [],
        .commitTarget: [],
        // The guest keeps using the overlay; it may even be resized (QEMU lets the active layer
        // be resized while an intermediate commit runs below it).
        .commitOverlay: [.resize],
        .mirrorSource: [],
        .mirrorTarget: [],
        .createTarget: [],
        // The guest keeps using the source, and may start another backup of it (QEMU allows
        // several backups of one node, each with its own filter).
        .backupSource: [.backup],
        .backupTarget: [],
    ]

    public static func allows(_ operation: NodeOperation, whileUsedAs role: JobNodeRole) -> Bool {
        allowed[role]?.contains(operation) ?? false
    }
}
