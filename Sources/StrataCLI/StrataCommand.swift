import ArgumentParser

struct StrataCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "A block-device I/O engine: a graph of block nodes behind device queues, changed live.",
        subcommands: [BenchCommand.self, ImgCommand.self, IoCommand.self, LabCommand.self, QMPCommandLine.self, ServeCommand.self, SimCommand.self, StatsCommandLine.self]
    )

    /// Parses the command line and runs the chosen subcommand. `main.swift` calls this after
    /// installing the executors, which must happen before ArgumentParser's own entry point would run.
    static func dispatch() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
