import ArgumentParser
import Glibc
import StrataEngine
import StrataImageTools
import StrataNodes

/// `strata img convert`: qemu-img convert for any source format this tree reads and target
/// formats with a creator in `ImageTargetCreators` (raw; qcow2 once its creator is registered).
struct ImgConvertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "convert", abstract: "Copy an image's content into another image (as qemu-img convert).")

    @Option(name: .customShort("f"), help: "Source format; probed when not given.")
    var sourceFormat: String?
    @Option(name: .customShort("O"), help: "Target format (default raw).")
    var targetFormat = "raw"
    @Option(name: .customShort("o"), help: "Target creation options, key=value[,key=value].")
    var creationOptions: String?
    @Flag(name: .customShort("c"), help: "Compress the target's clusters (qcow2).")
    var compress = false
    @Option(name: .customShort("B"), help: "Backing file of the target.")
    var backingFile: String?
    @Flag(name: .customShort("n"), help: "Do not create the target: it exists already.")
    var noCreate = false
    @Option(name: .customShort("S"), help: "Consecutive zero bytes needed to leave a hole (default 4k; 0 writes everything).")
    var sparseSize = "4k"
    @Flag(name: .customShort("W"), help: "Allow out-of-order writes to the target.")
    var outOfOrder = false
    @Option(name: .customShort("m"), help: "Number of parallel copy tasks (1-16).")
    var workers = 8
    @Flag(name: .customShort("p"), help: "Show progress.")
    var progress = false
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Flag(name: .customShort("U"), help: "Force shared permissions on the source: take no image locks.")
    var forceShare = false
    @Option(name: .customShort("t"), help: "Target cache mode (default unsafe).")
    var targetCache = "unsafe"
    @Option(name: .customShort("T"), help: "Source cache mode (default writeback).")
    var sourceCache = "writeback"
    @Flag(name: .customLong("target-is-zero"), help: "The target (with -n) already reads as zeros.")
    var targetIsZero = false
    @Argument(help: "The source image.")
    var source: String
    @Argument(help: "The target image.")
    var target: String

    /// One queue per online CPU (at most 4) on both sides: the copy is memory-bound, so it spreads
    /// over threads, and worker i reads and writes on queue i's thread (both sessions pin queue i
    /// to the same CPU), so a chunk never changes thread between its read and its write.
    static var queueCount: Int { max(1, min(4, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))) }

    func validate() throws {
        guard (1...16).contains(workers) else { throw ValidationError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16") }
        if targetIsZero && !noCreate { throw ValidationError("--target-is-zero requires use of -n flag") }
        guard let sparse = try? IoFormat.number(sparseSize), sparse >= 0, sparse % 512 == 0 else {
            throw ValidationError("Invalid buffer size for sparse output specified: \(sparseSize)")
        }
        guard ImageTargetCreators.byFormat[targetFormat] != nil || noCreate else {
            throw ValidationError("Unknown or unsupported target format '\(targetFormat)'")
        }
    }

    func run() async throws {
        let sourceSession: ImageSession
        do {
            sourceSession = try await ImageSession.open(source, options: ImageOpenOptions(format: sourceFormat, readOnly: true, forceShare: forceShare, cacheMode: sourceCache, queueCount: Self.queueCount))
        } catch {
            StandardError.print("strata img: Could not open '\(source)': \(error)")
            throw ExitCode(1)
        }
        var convert = ImageConvert()
        convert.sparseBytes = UInt64(try IoFormat.number(sparseSize))
        convert.workers = workers
        convert.outOfOrder = outOfOrder
        convert.targetIsZero = targetIsZero
        if compress {
            guard targetFormat == "qcow2" else {
                StandardError.print("strata img: Compression not supported for this file format")
                throw ExitCode(1)
            }
        }
        if progress && !quiet {
            convert.progress = { fraction in
                print(IoFormat.format("    (%3.2f/100%%)\r", fraction * 100), terminator: "")
                fflush(nil)
            }
        }
        var targetSession: ImageSession?
        do {
            if !noCreate {
                let creator = ImageTargetCreators.byFormat[targetFormat]!
                convert.targetIsZero = try await creator.create(path: target, sizeBytes: sourceSession.sizeBytes, options: try parsedCreationOptions())
            }
            let opened = try await ImageSession.open(target, options: ImageOpenOptions(format: targetFormat, cacheMode: targetCache, queueCount: Self.queueCount))
            targetSession = opened
            if compress { convert.compressClusterBytes = opened.clusterSizeBytes }
            if progress && !quiet { convert.progress?(0) }
            try await convert.run(source: sourceSession, target: opened)
            if progress && !quiet { print("") }
            let closed = await opened.close()
            await sourceSession.close()
            guard closed.isOK else { throw ImageSessionError.notSupported("Could not flush '\(target)': \(closed)") }
        } catch {
            await targetSession?.close()
            await sourceSession.close()
            StandardError.print("strata img: \(error)")
            throw ExitCode(1)
        }
    }

    /// -o's options (qemu-img's syntax, `,,` escaping a comma), with -B as backing_file.
    private func parsedCreationOptions() throws -> [String: String] {
        var options: [String: String] = [:]
        if let creationOptions {
            for entry in try ImageCreateOptionString(parsing: creationOptions).entries { options[entry.key] = entry.value }
        }
        if let backingFile { options["backing_file"] = backingFile }
        return options
    }
}
