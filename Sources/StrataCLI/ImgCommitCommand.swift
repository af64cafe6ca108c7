import ArgumentParser
import Glibc
import StrataEngine
import StrataImageTools

/// `strata img commit`: qemu-img commit over `ImageCommit`.
struct ImgCommitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "commit", abstract: "Commit an image's changes into its backing file (as qemu-img commit).")

    @Option(name: .customShort("f"), help: "Image format; probed when not given.")
    var format: String?
    @Option(name: .customShort("t"), help: "Cache mode (default writeback).")
    var cache = "writeback"
    @Option(name: .customShort("b"), help: "The backing image to commit into (implies -d).")
    var base: String?
    @Flag(name: .customShort("d"), help: "Do not empty the image after committing.")
    var drop = false
    @Flag(name: .customShort("p"), help: "Show progress.")
    var progress = false
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Argument(help: "The image file.")
    var file: String

    func run() async throws {
        var commit = ImageCommit()
        commit.format = format
        commit.cacheMode = cache
        commit.base = base
        commit.drop = drop
        if progress && !quiet { commit.progress = ImgProgress.printer }
        do {
            try await commit.run(path: file)
        } catch {
            if progress && !quiet { print("") }
            ImgProgress.report(error)
            throw ExitCode(1)
        }
        if progress && !quiet { print("") }
        if !quiet { print("Image committed.") }
    }
}
