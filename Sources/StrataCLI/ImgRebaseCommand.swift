import ArgumentParser
import StrataEngine
import StrataImageTools

/// `strata img rebase`: qemu-img rebase over `ImageRebase`.
struct ImgRebaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rebase", abstract: "Change an image's backing file (as qemu-img rebase).")

    @Option(name: .customShort("f"), help: "Image format; probed when not given.")
    var format: String?
    @Option(name: .customShort("t"), help: "Cache mode (default writeback).")
    var cache = "writeback"
    @Option(name: .customShort("F"), help: "The new backing file's format.")
    var backingFormat: String?
    @Flag(name: .customShort("u"), help: "Unsafe: only change the name the image records.")
    var unsafe = false
    @Flag(name: .customShort("p"), help: "Show progress.")
    var progress = false
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Option(name: .customShort("b"), help: "The new backing file (empty: none).")
    var backing: String
    @Argument(help: "The image file.")
    var file: String

    func run() async throws {
        var rebase = ImageRebase()
        rebase.format = format
        rebase.cacheMode = cache
        rebase.backingFormat = backingFormat
        rebase.unsafe = unsafe
        if progress && !quiet && !unsafe { rebase.progress = ImgProgress.printer }
        do {
            try await rebase.run(path: file, backing: backing)
        } catch {
            if rebase.progress != nil { print("") }
            ImgProgress.report(error)
            throw ExitCode(1)
        }
        if rebase.progress != nil { print("") }
    }
}
