import ArgumentParser
import Glibc

/// `strata img`: offline image tools with qemu-img's subcommands, options and output.
struct ImgCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "img",
        abstract: "Create, inspect, check, convert and change disk images (qemu-img's subcommands).",
        subcommands: [ImgCreateCommand.self, ImgInfoCommand.self, ImgCheckCommand.self, ImgMapCommand.self, ImgCompareCommand.self,
                      ImgConvertCommand.self, ImgMeasureCommand.self, ImgSnapshotCommand.self, ImgAmendCommand.self, ImgCommitCommand.self,
                      ImgRebaseCommand.self, ImgResizeCommand.self, ImgBenchCommand.self, ImgBitmapCommand.self]
    )

    /// Prints `strata img: MESSAGE` on stderr and exits with `status`, as qemu-img's error_report.
    static func fail(_ message: String, status: Int32 = 1) -> ExitCode {
        printError(message)
        return ExitCode(status)
    }

    static func printError(_ message: String) {
        StandardError.print("strata img: \(message)")
    }

    /// Runs `body`, turning any error into a clear message and exit status 1.
    static func guarded(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw fail("\(error)")
        }
    }
}
