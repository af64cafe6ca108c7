import ArgumentParser
import Glibc
import StrataImageTools
import StrataNodes

/// `strata img amend [-f fmt] [-o options] [-q] [-p] [--force] FILE`: changes a qcow2 image's
/// format options in place as qemu-img 7.2 does (compat upgrade and downgrade, lazy refcounts),
/// with its messages and exit statuses.
struct ImgAmendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "amend", abstract: "Change a qcow2 image's format options in place.")

    @Option(name: .customShort("f"), help: "Image format (probed when left out).")
    var format: String?
    @Option(name: .customShort("o"), help: "Options to change, key=value,... ('-o help' lists them).")
    var options: [String] = []
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Flag(name: .customShort("p"), help: "Show progress.")
    var progress = false
    @Flag(name: .customLong("force"), help: "Allow unsafe operations (accepted; only encryption changes use it).")
    var force = false
    @Argument(help: "The image file.")
    var files: [String] = []

    func run() async throws {
        try await ImgCommand.guarded {
            guard !options.isEmpty else { throw ImgCommand.fail("Must specify options (-o)\nTry 'strata img --help' for more information") }
            if options.contains(where: \.isEmpty) { throw ImgCommand.fail("Invalid option list: ") }
            let optionString: ImageCreateOptionString
            do {
                optionString = try ImageCreateOptionString(parsing: options)
            } catch {
                throw ImgCommand.fail("\(error)")
            }
            if format != nil, optionString.wantsHelp { return try printHelp(format: format!) }
            guard files.count == 1, let file = files.first else {
                throw ImgCommand.fail("Expecting one image file name\nTry 'strata img --help' for more information")
            }
            let chosen: String
            if let format {
                chosen = format
            } else {
                do {
                    chosen = try await ImageInfoProbe.format(file)
                } catch {
                    throw ImgCommand.fail("Could not open '\(file)': \(error)")
                }
            }
            switch chosen {
            case "qcow2": break
            case "raw": throw ImgCommand.fail("Format driver 'raw' does not support option amendment")
            default: throw ImgCommand.fail("Unknown driver '\(chosen)'")
            }

            let amender: Qcow2Amender
            do {
                let io = try Qcow2FileIO(path: file, writable: true)
                amender = try await Qcow2Amender(io: io, filename: file)
            } catch let error as Qcow2FileIOError {
                throw ImgCommand.fail("Could not open '\(file)': \(error)")
            } catch {
                throw ImgCommand.fail("\(error)")
            }
            if optionString.wantsHelp { return try printHelp(format: chosen) }
            let parsed: Qcow2AmendOptions
            do {
                parsed = try Qcow2AmendOptions(optionString)
            } catch {
                throw ImgCommand.fail("\(error)")
            }
            let showProgress = progress && !quiet
            if showProgress {
                amender.progress = { fraction in
                    print(IoFormat.format("    (%3.2f/100%%)\r", fraction * 100), terminator: "")
                    fflush(nil)
                }
                amender.progress(0)
            }
            defer { if showProgress { print("") } }
            do {
                try await amender.amend(parsed)
            } catch {
                throw ImgCommand.fail("\(error)")
            }
        }
    }

    private func printHelp(format: String) throws {
        guard format == "qcow2" else { throw ImgCommand.fail("Format driver '\(format)' does not support option amendment") }
        print("Amend options for 'qcow2':")
        for option in Qcow2AmendOptions.help {
            let name = "\(option.name)=<\(option.type)>"
            print("  \(name)\(String(repeating: " ", count: max(0, 22 - name.count))) - \(option.help)")
        }
    }
}
