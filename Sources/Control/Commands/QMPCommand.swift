import StrataFormatting

/// One QMP command: its name as QEMU spells it and what it does. A command reads its arguments
/// through `QMPArguments` (unknown ones refused) and returns the reply's `return` value.
struct QMPCommand: Sendable {
    typealias Run = @Sendable (isolated QMPMonitor, inout QMPArguments) async throws -> OrderedJSON

    let name: String
    let run: Run

    init(_ name: String, _ run: @escaping Run) {
        precondition(!name.isEmpty, "a command has a name")
        self.name = name
        self.run = run
    }
}

/// Every command the monitor knows, by area. `query-commands` lists exactly these.
enum QMPCommandTable {
    static let all: [QMPCommand] = MonitorCommands.all + BlockdevCommands.all + ExportCommands.all + ObjectCommands.all
        + TransactionCommands.all + StatsCommands.all
        + JobCommands.all + BlockJobCommands.all + BitmapCommands.all + SnapshotCommands.all
}
