/// Right-aligned columns of text, two spaces apart, as the command line prints tables.
public enum TextTable {
    public static func lines(header: [String], rows: [[String]]) -> [String] {
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { String(repeating: " ", count: widths[$0.offset] - $0.element.count) + $0.element }.joined(separator: "  ")
        }
        return [line(header)] + rows.map(line)
    }
}
