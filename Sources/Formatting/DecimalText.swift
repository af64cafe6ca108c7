import Glibc

/// Fixed-point decimal text without Foundation: `fixed(3.14159, 2)` is "3.14".
public enum DecimalText {
    /// As C's `printf("%.*f")`, which QEMU's tools print with: ties round to even on the exact
    /// binary value (2/64 as a percentage, 3.125, prints 3.12).
    public static func fixed(_ value: Double, _ digits: Int) -> String {
        precondition((0...30).contains(digits), "a sensible number of decimals")
        var buffer = [CChar](repeating: 0, count: 64)
        let written = withVaList([Int32(digits), value]) { vsnprintf(&buffer, buffer.count, "%.*f", $0) }
        if written >= buffer.count {
            buffer = [CChar](repeating: 0, count: Int(written) + 1)
            _ = withVaList([Int32(digits), value]) { vsnprintf(&buffer, buffer.count, "%.*f", $0) }
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// An integer with thousands separated by commas: `grouped(1234567)` is "1,234,567".
    public static func grouped(_ value: Int) -> String {
        let digits = String(value.magnitude)
        var text = ""
        for (index, digit) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { text.append(",") }
            text.append(digit)
        }
        return value < 0 ? "-" + text : text
    }
}
