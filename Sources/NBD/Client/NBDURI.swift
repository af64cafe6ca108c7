/// QEMU's nbd URI filenames: `nbd://host[:port]/export` (also `nbd+tcp://`) and
/// `nbd+unix:///export?socket=/path`. The export is the path without its leading slash,
/// percent-decoded; an empty path is the default export "".
public struct NBDURI: Sendable, Hashable {
    public let server: NBDRemoteAddress
    public let exportName: String

    /// The URI schemes QEMU's nbd driver takes as filenames.
    public static let schemes = ["nbd", "nbd+tcp", "nbd+unix"]

    /// Parses `text`; the error says what is wrong with it.
    public init(_ text: String) throws(NBDURIError) {
        let unix: Bool
        let rest: Substring
        if text.hasPrefix("nbd+unix://") {
            unix = true
            rest = text.dropFirst("nbd+unix://".count)
        } else if text.hasPrefix("nbd+tcp://") {
            unix = false
            rest = text.dropFirst("nbd+tcp://".count)
        } else if text.hasPrefix("nbd://") {
            unix = false
            rest = text.dropFirst("nbd://".count)
        } else {
            throw NBDURIError(uri: text, reason: "scheme must be nbd, nbd+tcp or nbd+unix")
        }
        let queryStart = rest.firstIndex(of: "?")
        let beforeQuery = rest[..<(queryStart ?? rest.endIndex)]
        let query = queryStart.map { rest[rest.index(after: $0)...] } ?? ""
        let pathStart = beforeQuery.firstIndex(of: "/") ?? beforeQuery.endIndex
        let authority = beforeQuery[..<pathStart]
        var path = beforeQuery[pathStart...]
        if path.hasPrefix("/") { path = path.dropFirst() }
        guard let export = Self.percentDecoded(path) else { throw NBDURIError(uri: text, reason: "bad percent-encoding in the export name") }
        exportName = export

        var parameters: [String: String] = [:]
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let value = parts.count == 2 ? Self.percentDecoded(parts[1]) : nil else {
                throw NBDURIError(uri: text, reason: "query parameter '\(pair)' has no value")
            }
            parameters[String(parts[0])] = value
        }
        if unix {
            guard authority.isEmpty else { throw NBDURIError(uri: text, reason: "nbd+unix takes no host (use nbd+unix:///export?socket=PATH)") }
            guard let socket = parameters.removeValue(forKey: "socket"), !socket.isEmpty else {
                throw NBDURIError(uri: text, reason: "nbd+unix needs ?socket=PATH")
            }
            server = .unix(path: socket)
        } else {
            var host = Substring(authority)
            var port = Substring(NBDRemoteAddress.defaultPort)
            if host.hasPrefix("[") {
                // An IPv6 literal: [addr] or [addr]:port.
                guard let close = host.firstIndex(of: "]") else { throw NBDURIError(uri: text, reason: "unterminated IPv6 address") }
                let after = host[host.index(after: close)...]
                if after.hasPrefix(":") { port = after.dropFirst() } else if !after.isEmpty {
                    throw NBDURIError(uri: text, reason: "unexpected '\(after)' after the IPv6 address")
                }
                host = host[host.index(after: host.startIndex)..<close]
            } else if let colon = host.lastIndex(of: ":") {
                port = host[host.index(after: colon)...]
                host = host[..<colon]
            }
            guard !host.isEmpty else { throw NBDURIError(uri: text, reason: "no host (nbd://HOST[:PORT]/EXPORT)") }
            guard let number = UInt16(port), number > 0 else { throw NBDURIError(uri: text, reason: "port '\(port)' is not a number from 1 to 65535") }
            server = .inet(host: String(host), port: String(number))
        }
        if let unknown = parameters.keys.sorted().first {
            throw NBDURIError(uri: text, reason: "unknown query parameter '\(unknown)'")
        }
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.next().flatMap(hexValue), let low = utf8.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
