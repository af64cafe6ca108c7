/// Fixed-point decimal text without Foundation: `fixed(3.14159, 2)` is "3.14".
public enum DecimalText {
    public static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        if digits == 0 { return String(Int64(rounded)) }
        let text = String(rounded)
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        let fraction = parts.count > 1 ? String(parts[1].prefix(digits)) : ""
        return parts[0] + "." + fraction + String(repeating: "0", count: digits - fraction.count)
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
