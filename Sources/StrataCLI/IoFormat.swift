import Glibc

/// qemu-io's number parsing and report text (qemu-io-cmds.c: cvtnum, cvtstr, timestr,
/// print_report, dump_buffer), so output compares line for line with qemu-io's.
enum IoFormat {
    /// Why a number did not parse, with qemu-io's message.
    enum NumberError: Error {
        case invalid(String)
        case tooLarge(String)

        var message: String {
            switch self {
            case .invalid(let text): "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- \(text)"
            case .tooLarge(let text): "Parsing error: argument too large -- \(text)"
            }
        }
    }

    /// qemu_strtosz with bytes as the default unit: decimal (a fraction only with a suffix) or
    /// 0x hex, then at most one of B, K, M, G, T, P, E in either case.
    static func number(_ text: String) throws(NumberError) -> Int64 {
        var digits = Substring(text)
        var shift = 0
        if let last = digits.last, let index = "BKMGTPE".firstIndex(of: Character(last.uppercased())) {
            shift = 10 * "BKMGTPE".distance(from: "BKMGTPE".startIndex, to: index)
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, !digits.hasPrefix("-"), !digits.hasPrefix("+") else { throw .invalid(text) }
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
            guard let value = UInt64(digits.dropFirst(2), radix: 16) else { throw .invalid(text) }
            guard value <= UInt64(Int64.max) >> shift else { throw .tooLarge(text) }
            return Int64(value) << shift
        }
        guard digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), let value = Double(digits) else { throw .invalid(text) }
        let scaled = value * Double(UInt64(1) << shift)
        guard scaled == scaled.rounded(.down) else { throw .invalid(text) }
        guard scaled < 9.223372036854775807e18 else { throw .tooLarge(text) }
        return Int64(scaled)
    }

    /// A pattern byte as strtol(arg, 0) reads it; nil when it is not 0-255.
    static func patternByte(_ text: String) -> UInt8? {
        let value: Int?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            value = Int(text.dropFirst(2), radix: 16)
        } else if text.count > 1 && text.hasPrefix("0") {
            value = Int(text.dropFirst(), radix: 8)
        } else {
            value = Int(text)
        }
        guard let value, (0...255).contains(value) else { return nil }
        return UInt8(value)
    }

    /// cvtstr: "4 KiB", "1.500 KiB", "512 bytes".
    static func size(_ value: Double) -> String {
        let units: [(Int, String)] = [(60, "EiB"), (50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")]
        for (shift, suffix) in units where value >= Double(UInt64(1) << UInt64(shift)) {
            return trimmed(format("%.3f", value / Double(UInt64(1) << UInt64(shift))), suffix)
        }
        return trimmed(format("%f", value), "bytes")
    }

    private static func trimmed(_ number: String, _ suffix: String) -> String {
        if let range = number.firstRange(of: ".000") { return String(number[..<range.lowerBound]) + " " + suffix }
        return number + " " + suffix
    }

    /// timestr: "00.00 sec" under a second, else "H:MM:SS.ss"; always the latter with `fixed`.
    static func time(_ seconds: Double, fixed: Bool) -> String {
        let whole = UInt64(seconds)
        let fraction = seconds - Double(whole)
        if fixed || whole > 0 {
            return format("%u:%02u:%05.2f", UInt32(whole / 3600), UInt32(whole % 3600 / 60), Double(whole % 60) + fraction)
        }
        return format("%05.2f sec", fraction)
    }

    /// print_report: two lines, or one CSV line with -C.
    static func report(_ operation: String, seconds: Double, offset: Int64, count: Int64, total: Int64, ops: Int, csv: Bool) -> String {
        // A zero interval would print inf; qemu's clock never reads the same twice, this one might.
        let interval = max(seconds, 1e-9)
        if csv {
            return "\(total),\(ops),\(time(seconds, fixed: true)),\(format("%.3f", Double(total) / interval)),\(format("%.3f", Double(ops) / interval))"
        }
        return "\(operation) \(total)/\(count) bytes at offset \(offset)\n"
            + "\(size(Double(total))), \(ops) ops; \(time(seconds, fixed: false)) (\(size(Double(total) / interval))/sec and \(format("%.4f", Double(ops) / interval)) ops/sec)"
    }

    /// dump_buffer: 16 bytes a line, hex then printable characters.
    static func dump(_ bytes: UnsafeRawBufferPointer, offset: Int64) -> String {
        var lines: [String] = []
        var index = 0
        while index < bytes.count {
            let row = bytes[index..<min(index + 16, bytes.count)]
            var line = format("%08llx:  ", UInt64(offset) + UInt64(index))
            for byte in row { line += format("%02x ", byte) }
            line += " "
            for byte in row {
                let scalar = Unicode.Scalar(byte)
                line += scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)) ? String(scalar) : "."
            }
            lines.append(line)
            index += 16
        }
        return lines.joined(separator: "\n")
    }

    static func format(_ pattern: String, _ arguments: any CVarArg...) -> String {
        withVaList(arguments) { list in
            var buffer = [CChar](repeating: 0, count: 128)
            let needed = Int(vsnprintf(&buffer, buffer.count, pattern, list))
            return String(decoding: buffer.prefix(min(needed, buffer.count - 1)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}
