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
}
