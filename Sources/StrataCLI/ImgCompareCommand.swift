import ArgumentParser
import StrataEngine
import StrataImageTools

/// `strata img compare`: qemu-img compare's options, messages and exit codes
/// (0 identical, 1 different, 2 error, 3 allocation query failed, 4 read failed).
struct ImgCompareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "compare", abstract: "Check whether two images have the same content (as qemu-img compare).")

    @Option(name: .customShort("f"), help: "Format of the first image; probed when not given.")
    var firstFormat: String?
    @Option(name: .customShort("F"), help: "Format of the second image; probed when not given.")
    var secondFormat: String?
    @Flag(name: .customShort("s"), help: "Strict: images with different block status are not identical.")
    var strict = false
    @Flag(name: .customShort("q"), help: "Print nothing; the exit status tells.")
    var quiet = false
    @Flag(name: .customShort("U"), help: "Force shared permissions: take no image locks.")
    var forceShare = false
    @Option(name: .customShort("T"), help: "Cache mode of both images.")
    var cache = "writeback"
    @Argument(help: "The first image.")
    var first: String
    @Argument(help: "The second image.")
    var second: String

    func run() async throws {
        var sessions: [ImageSession] = []
        for (path, format) in [(first, firstFormat), (second, secondFormat)] {
            do {
                let options = ImageOpenOptions(format: format, readOnly: true, forceShare: forceShare, cacheMode: cache)
                sessions.append(try await ImageSession.open(path, options: options))
            } catch {
                for session in sessions { await session.close() }
                StandardError.print("strata img: Could not open '\(path)': \(error)")
                throw ExitCode(2)
            }
        }
        let outcome = await ImageCompare.compare(sessions[0], sessions[1], strict: strict)
        for session in sessions { await session.close() }
        if !quiet { for message in outcome.messages { print(message) } }
        if let error = outcome.error { StandardError.print("strata img: \(error)") }
        if outcome.exitCode != 0 { throw ExitCode(outcome.exitCode) }
    }
}
