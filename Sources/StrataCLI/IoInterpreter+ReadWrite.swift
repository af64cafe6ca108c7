import StrataEngine
import StrataGraph

/// read, write, readv and writev: one request each, timed and reported as qemu-io reports them.
extension IoInterpreter {
    func read(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "bCqvP:s:l:", command: "read") else { return false }
        if options.has("b") { out("read: -b (vmstate) is not supported"); return false }
        guard options.operands.count == 2 else { return usage("read") }
        guard let pattern = pattern(options, default: 0) else { return false }
        if pattern == nil && (options.has("s") || options.has("l")) { return usage("read") }
        guard let offset = number(options.operands[0]), let count = length(options.operands[1]) else { return false }
        var patternOffset: Int64 = 0
        var patternCount = count
        if let text = options.values["s"] { guard let value = number(text) else { return false }; patternOffset = value }
        if let text = options.values["l"] { guard let value = number(text) else { return false }; patternCount = value }
        else { patternCount = count - patternOffset }
        if pattern != nil && (patternCount < 0 || patternOffset + patternCount > count) {
            out("pattern verification range exceeds end of read data")
            return false
        }
        let buffer = AlignedBuffer(count: Int(count), filledWith: 0xab)
        let (status, seconds) = await timed(BlockRequest(operation: .read, offsetBytes: UInt64(offset), lengthBytes: Int(count), buffer: buffer.io))
        guard status.isOK else { out("read failed: \(Self.describe(status))"); return false }
        var ok = true
        if let pattern, buffer.firstMismatch(pattern, in: Int(patternOffset)..<Int(patternOffset + patternCount)) != nil {
            out("Pattern verification failed at offset \(offset + patternOffset), \(patternCount) bytes")
            ok = false
        }
        if options.has("q") { return ok }
        if options.has("v") { out(IoFormat.dump(UnsafeRawBufferPointer(buffer.bytes), offset: offset)) }
        out(IoFormat.report("read", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: options.has("C")))
        return ok
    }

    func write(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "bcCfnquzP:", command: "write") else { return false }
        let zeroes = options.has("z")
        if options.has("b") && zeroes { out("-b and -z cannot be specified at the same time"); return false }
        if options.has("f") && (options.has("b") || options.has("c")) { out("-f and -b or -c cannot be specified at the same time"); return false }
        if options.has("n") && !zeroes { out("-n requires -z to be specified"); return false }
        if options.has("u") && !zeroes { out("-u requires -z to be specified"); return false }
        if zeroes && options.has("P") { out("Only one of -z, -P, and -s can be specified at the same time"); return false }
        guard options.operands.count == 2 else { return usage("write") }
        guard let pattern = pattern(options, default: 0xcd) else { return false }
        guard let offset = number(options.operands[0]), let count = length(options.operands[1]) else { return false }
        if options.has("b") { out("write: -b (vmstate) is not supported"); return false }
        var flags: RequestFlags = []
        if options.has("c") { flags.insert(.compressed) }
        if options.has("f") { flags.insert(.fua) }
        if options.has("u") { flags.insert(.mayUnmap) }
        if options.has("n") { flags.insert(.noFallback) }
        let buffer = AlignedBuffer(count: zeroes ? 0 : Int(count), filledWith: pattern ?? 0xcd)
        let request = zeroes
            ? BlockRequest(operation: .writeZeroes, offsetBytes: UInt64(offset), lengthBytes: Int(count), flags: flags)
            : BlockRequest(operation: .write, offsetBytes: UInt64(offset), lengthBytes: Int(count), buffer: buffer.io, flags: flags)
        let (status, seconds) = await timed(request)
        guard status.isOK else { out("write failed: \(Self.describe(status))"); return false }
        if !options.has("q") {
            out(IoFormat.report("wrote", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: options.has("C")))
        }
        return true
    }

    /// The lengths of a vectored request; the engine's requests take one buffer, so the vector is
    /// one contiguous buffer of their sum, which the nodes see as one request.
    func vectorLength(_ texts: ArraySlice<String>) -> Int64? {
        var total: Int64 = 0
        for text in texts {
            guard let value = number(text) else { return nil }
            guard value <= Int64(Int32.max) else { out("too large length argument -- \(text)"); return nil }
            total += value
        }
        guard total <= Self.maxRequestBytes else { out("length cannot exceed \(Self.maxRequestBytes), given \(total)"); return nil }
        return total
    }

    func readv(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "CqvP:", command: "readv") else { return false }
        guard options.operands.count >= 2 else { return usage("readv") }
        guard let pattern = pattern(options, default: 0) else { return false }
        guard let offset = number(options.operands[0]), let count = vectorLength(options.operands.dropFirst()) else { return false }
        let buffer = AlignedBuffer(count: Int(count), filledWith: 0xab)
        let (status, seconds) = await timed(BlockRequest(operation: .read, offsetBytes: UInt64(offset), lengthBytes: Int(count), buffer: buffer.io))
        guard status.isOK else { out("readv failed: \(Self.describe(status))"); return false }
        var ok = true
        if let pattern, buffer.firstMismatch(pattern, in: 0..<Int(count)) != nil {
            out("Pattern verification failed at offset \(offset), \(count) bytes")
            ok = false
        }
        if options.has("q") { return ok }
        if options.has("v") { out(IoFormat.dump(UnsafeRawBufferPointer(buffer.bytes), offset: offset)) }
        out(IoFormat.report("read", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: options.has("C")))
        return ok
    }

    func writev(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "CfqP:", command: "writev") else { return false }
        guard options.operands.count >= 2 else { return usage("writev") }
        guard let pattern = pattern(options, default: 0xcd) else { return false }
        guard let offset = number(options.operands[0]), let count = vectorLength(options.operands.dropFirst()) else { return false }
        let buffer = AlignedBuffer(count: Int(count), filledWith: pattern ?? 0xcd)
        let flags: RequestFlags = options.has("f") ? .fua : []
        let (status, seconds) = await timed(BlockRequest(operation: .write, offsetBytes: UInt64(offset), lengthBytes: Int(count), buffer: buffer.io, flags: flags))
        guard status.isOK else { out("writev failed: \(Self.describe(status))"); return false }
        if !options.has("q") {
            out(IoFormat.report("wrote", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: options.has("C")))
        }
        return true
    }
}
