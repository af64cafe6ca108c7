import ArgumentParser
import StrataEngine
import StrataImageTools

/// `strata img bench`: qemu-img bench's flags and output over an image session.
struct ImgBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Run a simple sequential I/O benchmark on an image (as qemu-img bench).")

    @Option(name: .customShort("c"), help: "Number of requests (default 75000).")
    var count = 75_000
    @Option(name: .customShort("d"), help: "Requests in flight (default 64).")
    var depth = 64
    @Option(name: .customShort("f"), help: "Image format; probed when not given.")
    var format: String?
    @Option(name: .customShort("s"), help: "Request size (default 4k).")
    var size = "4k"
    @Option(name: .customShort("S"), help: "Offset step between requests (default: the request size).")
    var step: String?
    @Option(name: .customShort("o"), help: "Offset of the first request.")
    var offset = "0"
    @Flag(name: .customShort("w"), help: "Write instead of read.")
    var write = false
    @Option(name: .customShort("t"), help: "Cache mode (default writeback).")
    var cache = "writeback"
    @Flag(name: .customShort("n"), help: "Disable the host cache (same as -t none).")
    var noCache = false
    @Option(name: .customShort("i"), help: "AIO mode: only io_uring (every request goes through the queue's ring).")
    var aio = "io_uring"
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Flag(name: .customShort("U"), help: "Force shared permissions: take no image locks.")
    var forceShare = false
    @Option(name: .customLong("pattern"), help: "Byte written by write requests (default 0).")
    var pattern = "0"
    @Option(name: .customLong("flush-interval"), help: "Flush after every N requests (writes only).")
    var flushInterval = 0
    @Flag(name: .customLong("no-drain"), help: "Flush without waiting for the requests in flight.")
    var noDrain = false
    @Argument(help: "The image file.")
    var file: String

    func validate() throws {
        guard count > 0 else { throw ValidationError("Invalid request count specified") }
        guard depth > 0 && depth <= 4096 else { throw ValidationError("Invalid queue depth specified") }
        guard let bytes = try? IoFormat.number(size), bytes > 0, bytes <= Int64(Int32.max) else { throw ValidationError("Invalid buffer size specified") }
        if let step { guard (try? IoFormat.number(step)) != nil else { throw ValidationError("Invalid step size specified") } }
        guard (try? IoFormat.number(offset)) != nil else { throw ValidationError("Invalid offset specified") }
        guard IoFormat.patternByte(pattern) != nil else { throw ValidationError("Invalid pattern byte specified") }
        guard flushInterval >= 0 else { throw ValidationError("Invalid flush interval specified") }
        if flushInterval > 0 && !write { throw ValidationError("--flush-interval is only available in write tests") }
        guard aio == "io_uring" else { throw ValidationError("Invalid aio option: \(aio) (only io_uring is available)") }
        guard ImageOpenOptions.cacheModes.contains(cache) else { throw ValidationError("Invalid cache mode: \(cache)") }
    }

    func run() async throws {
        var bench = ImageBench()
        bench.count = count
        bench.depth = depth
        bench.bufferBytes = Int(try IoFormat.number(size))
        bench.stepBytes = try step.map { UInt64(try IoFormat.number($0)) }
        bench.startOffset = UInt64(try IoFormat.number(offset))
        bench.write = write
        bench.pattern = IoFormat.patternByte(pattern)!
        bench.flushInterval = flushInterval
        bench.drainOnFlush = !noDrain
        let options = ImageOpenOptions(format: format, readOnly: !write, forceShare: forceShare, cacheMode: noCache ? "none" : cache)
        let session: ImageSession
        do {
            session = try await ImageSession.open(file, options: options)
        } catch {
            StandardError.print("strata img: Could not open '\(file)': \(error)")
            throw ExitCode(1)
        }
        if !quiet {
            print("Sending \(count) \(write ? "write" : "read") requests, \(bench.bufferBytes) bytes each, \(depth) in parallel (starting at offset \(bench.startOffset), step size \(bench.stepBytes ?? UInt64(bench.bufferBytes)))")
            if flushInterval > 0 { print("Sending flush every \(flushInterval) requests") }
        }
        let result: ImageBench.Result
        do {
            result = try await bench.run(session)
        } catch {
            await session.close()
            StandardError.print("strata img: \(error)")
            throw ExitCode(1)
        }
        await session.close()
        if let failure = result.firstError {
            StandardError.print("strata img: Failed request: \(failure) (\(result.failed) failed)")
            throw ExitCode(1)
        }
        if !quiet { print(IoFormat.format("Run completed in %3.3f seconds.", result.seconds)) }
    }
}
