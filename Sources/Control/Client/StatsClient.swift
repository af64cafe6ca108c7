import Glibc
import StrataGraph

/// A reader of `strata serve --stats`: one sample (a JSON line) at a time, blocking.
public final class StatsClient {
    private let fd: Int32
    private var buffered: [UInt8] = []
    /// A sample is one line; past this the stream is not what it should be.
    static let maxLineBytes = 64 << 20

    public init(path: String) throws {
        fd = try QMPClient.connect(path.hasPrefix("unix:") ? path : "unix:" + path)
    }

    deinit { Glibc.close(fd) }

    /// The next sample, parsed, with its line as sent.
    public func nextSample() throws -> (fields: [String: JSONValue], line: String) {
        let line = try nextLine()
        guard case .object(let fields)? = try? JSONValue.parse(line) else {
            throw QMPClient.ClientError.protocolError("a sample that is not a JSON object: \(line.prefix(200))")
        }
        return (fields, line)
    }

    private func nextLine() throws -> String {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                return line
            }
            guard buffered.count <= Self.maxLineBytes else { throw QMPClient.ClientError.protocolError("a sample line over 64 MiB") }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw QMPClient.ClientError.closed }
            buffered += chunk[0..<count]
        }
    }
}
