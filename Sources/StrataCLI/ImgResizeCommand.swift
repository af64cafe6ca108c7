import ArgumentParser
import StrataEngine
import StrataImageTools

/// `strata img resize`: qemu-img resize over `ImageResize`. A size starting with '-' is taken
/// as the size, not an option, as qemu-img takes it: options go before the file.
struct ImgResizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resize", abstract: "Change an image's size (as qemu-img resize).")

    @Option(name: .customShort("f"), help: "Image format; probed when not given.")
    var format: String?
    @Flag(name: .customLong("shrink"), help: "Allow making the image smaller.")
    var shrink = false
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Argument(help: "The image file.")
    var file: String
    @Argument(parsing: .captureForPassthrough, help: "[+|-]SIZE")
    var size: [String] = []

    func validate() throws {
        guard size.count == 1 else { throw ValidationError(size.isEmpty ? "Not enough arguments" : "Expecting one image file name") }
    }

    func run() async throws {
        do {
            let change = try ImageResize.SizeChange(parsing: size[0])
            try await ImageResize(format: format, shrink: shrink).run(path: file, size: change)
        } catch {
            ImgProgress.report(error)
            throw ExitCode(1)
        }
        if !quiet { print("Image resized.") }
    }
}
