import StrataFormatting
import StrataGraph
import StrataJobs

/// `transaction` (all actions or none) and Strata's graph edits that QEMU lacks, as `x-`
/// commands: a filter inserted above a node or on one edge, a filter removed, a node replaced in
/// every parent. Each is one graph transaction: queues switch between two requests, none drains.
///
/// A transaction's actions are QEMU's (the bitmap commands, blockdev-backup, abort) or Strata's
/// graph edits. They are prepared in order (bitmap changes made, backups checked); the graph
/// edits then go in as one graph transaction; if anything failed, the bitmap changes are taken
/// back in reverse order. Backups start last, so a bitmap added or cleared in the same
/// transaction counts every write the backup's snapshot does not hold.
enum TransactionCommands {
    static let all: [QMPCommand] = [
        QMPCommand("transaction") { monitor, arguments in
            let actions = try arguments.array("actions")
            let properties = try arguments.optionalObject("properties") ?? [:]
            try arguments.finish()
            if let mode = properties["completion-mode"] {
                guard mode == .string("individual") || mode == .string("grouped") else {
                    throw QMPError("Parameter 'completion-mode' does not accept value '\(mode)'")
                }
            }
            var bitmapActions: [BitmapAction] = []
            var backups: [BackupRequest] = []
            var edits: [GraphEdit] = []
            var atomicCancels: [String] = []
            var snapshots: [SnapshotAction] = []
            var order: [Int] = []
            for action in actions {
                guard case .object(let fields) = action, case .string(let type)? = fields["type"] else {
                    throw QMPError("Invalid parameter type for 'actions', expected: TransactionAction")
                }
                var data = QMPArguments(fields["data"]?.objectValue ?? [:])
                if let kind = BitmapAction.Kind(rawValue: type) {
                    bitmapActions.append(try BitmapAction.parse(kind, &data))
                    order.append(0)
                } else if type == "blockdev-backup" {
                    backups.append(try BackupRequest.parse(&data))
                    order.append(1)
                } else if type == "abort" {
                    order.append(2)
                } else if type == "blockdev-snapshot-sync" || type == "blockdev-snapshot" {
                    snapshots.append(type == "blockdev-snapshot" ? try SnapshotAction.parse(&data) : try SnapshotAction.parseSync(&data))
                    order.append(3)
                } else if type == "x-block-job-cancel" {
                    atomicCancels.append(try data.string("device"))
                    try data.finish()
                } else {
                    do { edits.append(try GraphEdit.parse(action)) } catch { throw QMPError("\(error)") }
                }
            }
            var prepared: [BitmapAction.Prepared] = []
            func rollBack() async { for undo in prepared.reversed() { await undo.abort() } }
            do {
                var nextBitmap = 0
                var nextBackup = 0
                var nextSnapshot = 0
                let controller = monitor.daemon.engine.controller
                for kind in order {
                    switch kind {
                    case 0:
                        prepared.append(try await bitmapActions[nextBitmap].prepare(monitor))
                        nextBitmap += 1
                    case 1:
                        _ = try await backups[nextBackup].plan(controller)
                        nextBackup += 1
                    case 3:
                        edits += try await snapshots[nextSnapshot].prepare(monitor)
                        nextSnapshot += 1
                    default:
                        throw QMPError("Transaction aborted using Abort action")
                    }
                }
                if !atomicCancels.isEmpty {
                    _ = try await monitor.runJob { [atomicCancels] jobs throws(JobError) in try await jobs.mirrorsToCancelTogether(atomicCancels) }
                }
                if !edits.isEmpty { try await monitor.apply(edits) }
            } catch {
                await rollBack()
                throw error
            }
            for undo in prepared { await undo.commit() }
            let group = properties["completion-mode"] == .string("grouped") ? JobTransaction(control: monitor.daemon.engine.control) : nil
            for backup in backups { try await backup.start(monitor, transaction: group) }
            if !atomicCancels.isEmpty {
                try await monitor.runJob { [atomicCancels] jobs throws(JobError) in try await jobs.cancelMirrorsAtomically(atomicCancels) }
            }
            return .emptyObject
        },
        QMPCommand("x-insert-filter") { monitor, arguments in
            try await monitor.apply([try Self.edit("insert-filter", &arguments)])
            return .emptyObject
        },
        QMPCommand("x-remove-filter") { monitor, arguments in
            try await monitor.apply([try Self.edit("remove-filter", &arguments)])
            return .emptyObject
        },
        QMPCommand("x-blockdev-replace") { monitor, arguments in
            try await monitor.apply([try Self.edit("blockdev-replace", &arguments)])
            return .emptyObject
        },
    ]

    /// The command's arguments as the data of one transaction action of `type`.
    static func edit(_ type: String, _ arguments: inout QMPArguments) throws(QMPError) -> GraphEdit {
        do {
            return try GraphEdit.parse(.object(["type": .string(type), "data": .object(arguments.all)]))
        } catch {
            throw QMPError("\(error)")
        }
    }
}
