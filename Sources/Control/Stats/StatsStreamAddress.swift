/// Where `strata serve --stats` streams statistics: `unix:PATH[,interval-ms=N]`.
public struct StatsStreamAddress: Sendable, Equatable {
    public static let defaultIntervalMs = 1000
    public let path: String
    public let intervalMs: Int

    public init(path: String, intervalMs: Int = defaultIntervalMs) {
        self.path = path
        self.intervalMs = intervalMs
    }

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(parsing text: String) throws(ParseError) {
        guard text.hasPrefix("unix:") else { throw ParseError(description: "--stats: expected unix:PATH[,interval-ms=N], got '\(text)'") }
        var parts = text.dropFirst(5).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let path = parts.removeFirst()
        guard !path.isEmpty else { throw ParseError(description: "--stats: the socket path is empty") }
        var interval = Self.defaultIntervalMs
        for part in parts {
            let pair = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2, pair[0] == "interval-ms" else {
                throw ParseError(description: "--stats: unknown option '\(part)' (only interval-ms=N)")
            }
            guard let value = Int(pair[1]), (10...3_600_000).contains(value) else {
                throw ParseError(description: "--stats: interval-ms must be a whole number from 10 to 3600000, got '\(pair[1])'")
            }
            interval = value
        }
        self.init(path: path, intervalMs: interval)
    }
}
