import ArgumentParser
import StrataImageTools
import StrataNodes

/// `strata img check [-f fmt] [-r leaks|all] [--output=human|json] [-q] [-U] FILE`. Exit
/// status as qemu-img: 0 clean, 1 check not completed, 2 corruptions, 3 leaks, 63 no check.
struct ImgCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check (and repair) an image's metadata.")

    @Option(name: .customShort("f"), help: "Image format (probed when left out).")
    var format: String?
    @Option(name: .customShort("r"), help: "Repair: leaks or all.")
    var repair: String?
    @Option(help: "human or json.")
    var output = "human"
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Flag(name: .customShort("U"), help: "Open without locking (accepted; check does not lock).")
    var forceShare = false
    @Argument(help: "The image file.")
    var file: String

    func run() async throws {
        try await ImgCommand.guarded {
            guard output == "human" || output == "json" else { throw ImgCommand.fail("--output must be used with human or json as argument.") }
            var mode: Qcow2RepairMode?
            if let repair {
                guard let parsed = Qcow2RepairMode(rawValue: repair) else {
                    throw ImgCommand.fail("Invalid option for -r: '\(repair)' (expecting leaks or all)")
                }
                mode = parsed
            }
            let chosen = if let format { format } else { try await ImageInfoProbe.format(file) }
            switch chosen {
            case "qcow2": break
            case "raw": throw ImgCommand.fail("This image format does not support checks", status: 63)
            default: throw ImgCommand.fail("Unknown driver '\(chosen)'")
            }
            let io = try Qcow2FileIO(path: file, writable: mode != nil)
            let report: Qcow2CheckReport
            do {
                report = try await Qcow2Checker.check(io: io, filename: file, repair: mode)
            } catch let error as Qcow2ImageError where error.message.hasPrefix("Could not open") {
                throw ImgCommand.fail(error.message)
            } catch {
                throw ImgCommand.fail("Check failed: \(error)")
            }
            for line in report.messages { StandardError.print(line) }
            if let failure = report.failure { throw ImgCommand.fail("Check failed: \(failure)") }
            if !quiet { print(output == "json" ? report.json : report.human, terminator: output == "json" ? "\n" : "") }
            if report.checkErrors > 0 { throw ImgCommand.fail("Check failed") }
            if report.exitCode != 0 { throw ExitCode(report.exitCode) }
        }
    }
}
