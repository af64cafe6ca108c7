import ArgumentParser
import CStrataShim
import Glibc
import StrataEngine
import StrataImageTools

/// `strata io`: qemu-io's command-line interface over an image session. Each -c command runs in
/// order; a failing command makes the exit status 1 but the rest still run (qemu-io 7.2).
/// Without -c, commands come from standard input, with a prompt when it is a terminal.
struct IoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io",
        abstract: "Run qemu-io style commands (read, write, map, ...) against an image file.",
        discussion: "Example: strata io -f raw -c 'write -P 0xab 0 4k' -c 'read -P 0xab 0 4k' disk.img"
    )

    @Option(name: .customShort("f"), help: "Image format (raw or qcow2); probed when not given.")
    var format: String?
    @Flag(name: .customShort("r"), help: "Open the image read-only.")
    var readOnly = false
    @Flag(name: .customShort("n"), help: "Disable the host cache (same as -t none).")
    var noCache = false
    @Option(name: .customShort("t"), help: "Cache mode: none, writeback, writethrough, directsync, unsafe.")
    var cache: String?
    @Flag(name: .customShort("U"), help: "Force shared permissions: take no image locks.")
    var forceShare = false
    @Flag(name: .customShort("C"), help: "Copy-on-read: data read from the backing chain is copied into the image.")
    var copyOnRead = false
    @Option(name: .customShort("c"), help: "A command to run (repeatable); without any, read commands from standard input.")
    var commands: [String] = []
    @Argument(help: "The image file.")
    var file: String

    func validate() throws {
        if let cache, !ImageOpenOptions.cacheModes.contains(cache) && cache != "off" {
            throw ValidationError("Invalid cache option: \(cache)")
        }
        if noCache && cache != nil && cache != "none" { throw ValidationError("-n and -t \(cache!) cannot be given together") }
    }

    func run() async throws {
        // One line per completed command even into a pipe: a caller that kills this process
        // (the crash tests) learns from the output which commands completed.
        strata_line_buffer_stdout()
        var options = ImageOpenOptions(format: format, readOnly: readOnly, forceShare: forceShare,
                                       cacheMode: noCache ? "none" : cache ?? "writeback", copyOnRead: copyOnRead)
        options.unmap = true  // qemu-io's BDRV_O_UNMAP: a discard punches the file's hole
        let session: ImageSession
        do {
            session = try await ImageSession.open(file, options: options)
        } catch {
            StandardError.print("strata io: can't open device \(file): \(error)")
            throw ExitCode(1)
        }
        // QEMU probes blkverify's output too, which is guest data: raw, always.
        if format == nil && !readOnly && (file.hasPrefix("blkverify:") || (session.format == "raw" && !file.contains(":"))) {
            // qemu-io's warning, word for word (QEMU also refuses writes to block 0 that would
            // make the image probe as another format; Strata does not yet).
            StandardError.print("WARNING: Image format was not specified for '\(file)' and probing guessed raw.\n"
                + "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n"
                + "         Specify the 'raw' format explicitly to remove the restrictions.")
        }
        let interpreter = IoInterpreter(session: session)
        var failed = false
        if commands.isEmpty {
            let prompt = isatty(0) != 0
            while !interpreter.quitRequested {
                if prompt {
                    print("strata-io> ", terminator: "")
                    fflush(nil)
                }
                guard let line = readLine() else { break }
                if !(await interpreter.execute(line)) { failed = true }
            }
        } else {
            for command in commands where !interpreter.quitRequested {
                if !(await interpreter.execute(command)) { failed = true }
            }
        }
        await interpreter.drainAio()
        let closed = await session.close()
        if !closed.isOK {
            StandardError.print("strata io: flush on close failed: \(IoInterpreter.describe(closed))")
            failed = true
        }
        if failed { throw ExitCode(1) }
    }
}
