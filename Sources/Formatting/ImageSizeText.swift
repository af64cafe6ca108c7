/// Sizes as qemu-img reads them (qemu_strtosz): a decimal number, optionally with a fraction,
/// and an optional suffix B, k/K, M, G, T, P or E (powers of 1024). No suffix means bytes.
public enum ImageSizeText {
    public static let suffixHelp = "You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."

    /// The byte count, or nil when `text` is not a size or exceeds Int64.max.
    public static func parse(_ text: String) -> UInt64? {
        var digits = Substring(text)
        var multiplier: UInt64 = 1
        if let last = digits.last, !last.isNumber, last != "." {
            let shifts: [Character: UInt64] = ["b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60]
            guard let shift = shifts[Character(last.lowercased())] else { return nil }
            multiplier = 1 << shift
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) else { return nil }
        let parts = digits.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = UInt64(parts[0].isEmpty ? "0" : parts[0]) else { return nil }
        let (scaled, overflow) = whole.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        var total = scaled
        if parts.count == 2 {
            // A fraction of the unit; qemu truncates what is left below a byte.
            guard multiplier > 1, !parts[1].isEmpty, let fraction = Double("0." + parts[1]) else { return nil }
            let (sum, sumOverflow) = total.addingReportingOverflow(UInt64(fraction * Double(multiplier)))
            guard !sumOverflow else { return nil }
            total = sum
        }
        guard total <= UInt64(Int64.max) else { return nil }
        return total
    }
}
