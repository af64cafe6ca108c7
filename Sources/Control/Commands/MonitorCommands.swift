import StrataFormatting

/// The monitor's own commands: version, command list, quit. (`qmp_capabilities` is the session's.)
enum MonitorCommands {
    static let all: [QMPCommand] = [
        QMPCommand("query-version") { _, arguments in
            try arguments.finish()
            return .object([
                ("qemu", .object([("micro", .int(QMPMonitor.qemuVersion.micro)), ("minor", .int(QMPMonitor.qemuVersion.minor)),
                                  ("major", .int(QMPMonitor.qemuVersion.major))])),
                ("package", .string(QMPMonitor.package)),
            ])
        },
        QMPCommand("query-commands") { monitor, arguments in
            try arguments.finish()
            let names = (monitor.commands.keys + ["qmp_capabilities"]).sorted()
            return .array(names.map { .object([("name", .string($0))]) })
        },
        QMPCommand("query-qmp-schema") { _, arguments in
            try arguments.finish()
            return QMPSchema.entries
        },
        QMPCommand("quit") { _, arguments in
            try arguments.finish()
            return .emptyObject
        },
    ]
}
