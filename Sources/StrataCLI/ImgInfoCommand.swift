import ArgumentParser
import StrataFormatting
import StrataImageTools
import StrataNodes

/// `strata img info [-f fmt] [--output=human|json] [--backing-chain] [-U] FILE`.
struct ImgInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show an image's format, sizes and qcow2 details.")
    /// Deeper chains are refused rather than followed (a chain may loop through a hostile name).
    static let maxChainDepth = 64

    @Option(name: .customShort("f"), help: "Image format (probed when left out).")
    var format: String?
    @Option(help: "human or json.")
    var output = "human"
    @Flag(name: .customLong("backing-chain"), help: "Show every image of the backing chain.")
    var backingChain = false
    @Flag(name: .customShort("U"), help: "Open without locking (accepted; info never locks).")
    var forceShare = false
    @Argument(help: "The image file.")
    var file: String

    func run() async throws {
        try await ImgCommand.guarded {
            guard output == "human" || output == "json" else { throw ImgCommand.fail("--output must be used with human or json as argument.") }
            var infos: [ImageInfo] = []
            var path = file
            var chainFormat = format
            var seen: Set<String> = []
            while true {
                guard seen.insert(path).inserted else { throw ImgCommand.fail("Backing file '\(path)' creates an infinite loop.") }
                guard infos.count < Self.maxChainDepth else { throw ImgCommand.fail("The backing chain is longer than \(Self.maxChainDepth) images") }
                let info = try await ImageInfo.read(path: path, format: chainFormat)
                infos.append(info)
                guard backingChain, let next = info.fullBackingFilename else { break }
                path = next
                chainFormat = info.qcow2?.backingFormat
            }
            if output == "json" {
                print(backingChain ? OrderedJSON.array(infos.map(\.json)).text() : infos[0].json.text())
            } else {
                print(infos.map(\.human).joined(separator: "\n"), terminator: "")
            }
        }
    }
}
