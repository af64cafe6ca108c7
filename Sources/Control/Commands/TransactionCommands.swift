import StrataFormatting
import StrataGraph

/// `transaction` (all actions or none) and Strata's graph edits that QEMU lacks, as `x-`
/// commands: a filter inserted above a node or on one edge, a filter removed, a node replaced in
/// every parent. Each is one graph transaction: queues switch between two requests, none drains.
enum TransactionCommands {
    static let all: [QMPCommand] = [
        QMPCommand("transaction") { monitor, arguments in
            let actions = try arguments.array("actions")
            _ = try arguments.optionalObject("properties")
            try arguments.finish()
            guard !actions.isEmpty else { return .emptyObject }
            let edits: [GraphEdit]
            do { edits = try GraphEdit.parseList(.array(actions)) } catch { throw QMPError("\(error)") }
            try await monitor.apply(edits)
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
