import StrataEngine
import StrataGraph
import StrataImageTools
import StrataRuntime

/// aio_read, aio_write and aio_flush: a request is submitted and the command returns at once;
/// its report prints when it completes, and its failure does not change the exit status (in
/// qemu-io the command already succeeded). aio_flush waits for all of them.
extension IoInterpreter {
    func aioRead(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "CqvP:", command: "aio_read") else { return false }
        guard options.operands.count >= 2 else { return usage("aio_read") }
        guard let pattern = pattern(options, default: 0) else { return false }
        guard let offset = number(options.operands[0]), let count = vectorLength(options.operands.dropFirst()) else { return false }
        let buffer = AlignedBuffer(count: Int(count), filledWith: 0xab)
        let (quiet, verbose, csv) = (options.has("q"), options.has("v"), options.has("C"))
        pendingAio.append(Self.startAio(session: session, request: BlockRequest(operation: .read, offsetBytes: UInt64(offset), lengthBytes: Int(count), buffer: buffer.io), buffer: buffer) { status, seconds in
            guard status.isOK else { print("readv failed: \(Self.describe(status))"); return }
            if let pattern, buffer.firstMismatch(pattern, in: 0..<Int(count)) != nil {
                print("Pattern verification failed at offset \(offset), \(count) bytes")
            }
            if quiet { return }
            if verbose { print(IoFormat.dump(UnsafeRawBufferPointer(buffer.bytes), offset: offset)) }
            print(IoFormat.report("read", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: csv))
        })
        return true
    }

    func aioWrite(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "CfquzP:", command: "aio_write") else { return false }
        let zeroes = options.has("z")
        if options.has("u") && !zeroes { out("-u requires -z to be specified"); return false }
        if zeroes && options.has("P") { out("-z and -P cannot be specified at the same time"); return false }
        guard options.operands.count >= 2 else { return usage("aio_write") }
        if zeroes && options.operands.count > 2 { out("-z supports only a single length parameter"); return false }
        guard let pattern = pattern(options, default: 0xcd) else { return false }
        guard let offset = number(options.operands[0]), let count = vectorLength(options.operands.dropFirst()) else { return false }
        var flags: RequestFlags = []
        if options.has("f") { flags.insert(.fua) }
        if options.has("u") { flags.insert(.mayUnmap) }
        let buffer = AlignedBuffer(count: zeroes ? 0 : Int(count), filledWith: pattern ?? 0xcd)
        let request = zeroes
            ? BlockRequest(operation: .writeZeroes, offsetBytes: UInt64(offset), lengthBytes: Int(count), flags: flags)
            : BlockRequest(operation: .write, offsetBytes: UInt64(offset), lengthBytes: Int(count), buffer: buffer.io, flags: flags)
        let (quiet, csv) = (options.has("q"), options.has("C"))
        pendingAio.append(Self.startAio(session: session, request: request, buffer: buffer) { status, seconds in
            guard status.isOK else { print("aio_write failed: \(Self.describe(status))"); return }
            if !quiet { print(IoFormat.report("wrote", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: csv)) }
        })
        return true
    }

    /// Submits `request` in a task of its own and hands the outcome to `report`; `buffer` (the
    /// request's memory) lives until then.
    static func startAio(session: ImageSession, request: BlockRequest, buffer: AlignedBuffer,
                         report: @escaping @Sendable (IOStatus, Double) -> Void) -> Task<Void, Never> {
        Task {
            let start = MonotonicClock.now()
            let status = await session.submit(request)
            withExtendedLifetime(buffer) { report(status, Double(MonotonicClock.now() - start) / 1e9) }
        }
    }

    func aioFlush(_ arguments: [String]) async -> Bool {
        await drainAio()
        return true
    }
}
