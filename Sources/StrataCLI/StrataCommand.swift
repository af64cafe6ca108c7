import ArgumentParser

struct StrataCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "A block-device I/O engine: a graph of block nodes behind device queues, changed live.",
        subcommands: [BenchCommand.self]
    )
}
