import ArgumentParser
import StrataFormatting
import StrataImageTools
import StrataNodes
import StrataRBD

/// `strata img create [-f fmt] [-o opts] [-b backing] [-F backing_fmt] [-u] [-q] FILE [SIZE]`.
struct ImgCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a qcow2 or raw image.")

    @Option(name: .customShort("f"), help: "Image format: raw (default, as qemu-img) or qcow2.")
    var format = "raw"
    @Option(name: .customShort("o"), help: "Format options, key=value,... ('-o help' lists them).")
    var options: [String] = []
    @Option(name: .customShort("b"), help: "Backing file.")
    var backingFile: String?
    @Option(name: .customShort("F"), help: "Backing file format.")
    var backingFormat: String?
    @Flag(name: .customShort("u"), help: "Do not open the backing file (SIZE is then required).")
    var unsafe = false
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Argument(help: "The image file.")
    var file: String?
    @Argument(help: "Virtual size, with an optional k, M, G, T, P or E suffix.")
    var size: String?

    func run() async throws {
        try await ImgCommand.guarded {
            var optionString = try ImageCreateOptionString(parsing: options)
            if optionString.wantsHelp {
                print("Supported options:")
                let list = format == "qcow2" ? Qcow2CreateOptions.help : [("size", "size", "Virtual disk size")]
                for option in list { print("  \(option.0)=<\(option.1)>\(String(repeating: " ", count: max(1, 24 - option.0.count - option.1.count)))- \(option.2)") }
                return
            }
            guard let file else { throw ImgCommand.fail("Expecting image file name") }
            var sizeBytes: UInt64?
            if let size {
                guard let parsed = ImageSizeText.parse(size) else {
                    throw ImgCommand.fail("Invalid image size specified. \(ImageSizeText.suffixHelp)")
                }
                sizeBytes = parsed
            }
            switch format {
            case "raw", "rbd":
                if let value = optionString.value("size") { sizeBytes = ImageSizeText.parse(value) }
                for entry in optionString.entries where entry.key != "size" && !(entry.key == "preallocation" && entry.value == "off") {
                    throw ImgCommand.fail("\(file): Invalid parameter '\(entry.key)'")
                }
                guard let sizeBytes else { throw ImgCommand.fail("\(file): Image creation needs a size parameter") }
                // rbd is a protocol: -f rbd, or raw on an rbd: filename, creates the image in the cluster.
                guard format == "raw" || file.hasPrefix("rbd:") else { throw ImgCommand.fail("\(file): the rbd format needs an rbd: filename") }
                if !quiet { print("Formatting '\(file)', fmt=\(format) size=\(sizeBytes)") }
                if file.hasPrefix("rbd:") {
                    do {
                        try await RbdImage.create(filename: file, sizeBytes: sizeBytes)
                    } catch {
                        throw ImgCommand.fail("\(file): \(error)")
                    }
                } else {
                    let io = try Qcow2FileIO(path: file, writable: true, create: true)
                    try await io.truncate(to: sizeBytes)
                }
            case "qcow2":
                if let backingFile { optionString = optionString.setting("backing_file", to: backingFile) }
                if let backingFormat { optionString = optionString.setting("backing_fmt", to: backingFormat) }
                if let backing = optionString.value("backing_file") {
                    guard let backingFormat = optionString.value("backing_fmt") else {
                        throw ImgCommand.fail("\(file): Backing file specified without backing format")
                    }
                    if !unsafe {
                        let path = ImageInfo.resolve(backing, relativeTo: file)
                        let info: ImageInfo
                        do {
                            info = try await ImageInfo.read(path: path, format: backingFormat)
                        } catch {
                            throw ImgCommand.fail("\(file): Could not open backing image '\(path)': \(error)")
                        }
                        if sizeBytes == nil, optionString.value("size") == nil { sizeBytes = (info.virtualSize + 511) / 512 * 512 }
                    }
                }
                let parsed: Qcow2CreateOptions
                do {
                    parsed = try Qcow2CreateOptions(optionString, size: sizeBytes)
                } catch {
                    throw ImgCommand.fail("\(file): \(error)")
                }
                if !quiet { print("Formatting '\(file)', fmt=qcow2 \(parsed.formattingDescription)") }
                do {
                    try await Qcow2Creator.create(path: file, options: parsed)
                } catch {
                    throw ImgCommand.fail("\(file): \(error)")
                }
            default:
                throw ImgCommand.fail("Unknown file format '\(format)'")
            }
        }
    }
}
