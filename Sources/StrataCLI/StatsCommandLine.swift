import ArgumentParser
import Glibc
import StrataControl
import StrataGraph

/// `strata stats SOCKET`: the live table of a daemon's `--stats` stream.
struct StatsCommandLine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a daemon's per-node statistics stream (strata serve --stats) as a live table.",
        discussion: """
          strata serve --stats unix:/tmp/stats.sock,interval-ms=500 ...
          strata stats /tmp/stats.sock
        """
    )

    @Argument(help: "The statistics socket: a path (or unix:PATH).")
    var socket: String
    @Option(help: "Exit after this many samples (default: until the daemon stops).")
    var count: Int?
    @Flag(help: "Print each sample's JSON line instead of a table.")
    var json = false

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1, got \(count)") }
    }

    func run() throws {
        let client: StatsClient
        do { client = try StatsClient(path: socket) } catch { throw ValidationError("\(error)") }
        // Redrawn in place on a terminal; one table after another into a pipe or file.
        let terminal = isatty(STDOUT_FILENO) != 0
        var shown = 0
        while count.map({ shown < $0 }) ?? true {
            let sample: (fields: [String: JSONValue], line: String)
            do { sample = try client.nextSample() } catch QMPClient.ClientError.closed {
                if shown == 0 { StandardError.print("strata stats: the daemon closed the stream") }
                throw ExitCode(shown == 0 ? 1 : 0)
            }
            if json {
                print(sample.line)
            } else {
                if terminal { print("\u{1B}[H\u{1B}[2J", terminator: "") } else if shown > 0 { print("") }
                for line in StatsTable.lines(sample: sample.fields) { print(line) }
            }
            fflush(nil)
            shown += 1
        }
    }
}
