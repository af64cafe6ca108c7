/// Where the server listens: qemu-storage-daemon's `addr.type=inet|unix` SocketAddress.
public enum NBDServerAddress: Sendable, Equatable, CustomStringConvertible {
    case inet(host: String, port: UInt16)
    case unix(path: String)

    /// The default NBD port (IANA).
    public static let defaultPort: UInt16 = 10809

    public var description: String {
        switch self {
        case .inet(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }

    /// `addr.type=inet,addr.host=H,addr.port=P` or `addr.type=unix,addr.path=S` (qemu-storage-daemon's
    /// `--nbd-server` keys; other keys there are the caller's), or the short forms `HOST:PORT`,
    /// `[V6]:PORT`, `unix:PATH`.
    public static func parse(keys: [String: String]) throws(NBDServerError) -> NBDServerAddress {
        switch keys["addr.type"] {
        case "inet"?:
            guard let host = keys["addr.host"], !host.isEmpty else { throw .badAddress("--nbd-server: addr.type=inet needs addr.host") }
            let portText = keys["addr.port"] ?? String(defaultPort)
            guard let port = UInt16(portText) else { throw .badAddress("--nbd-server: addr.port '\(portText)' is not a port number (0-65535)") }
            return .inet(host: host, port: port)
        case "unix"?:
            guard let path = keys["addr.path"], !path.isEmpty else { throw .badAddress("--nbd-server: addr.type=unix needs addr.path") }
            return .unix(path: path)
        case let other?:
            throw .badAddress("--nbd-server: addr.type '\(other)' is not supported (inet or unix)")
        case nil:
            throw .badAddress("--nbd-server needs addr.type=inet or addr.type=unix")
        }
    }

    public static func parse(short text: String) throws(NBDServerError) -> NBDServerAddress {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw .badAddress("'\(text)': unix: needs a socket path") }
            return .unix(path: path)
        }
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .badAddress("'\(text)': unterminated [IPv6] address") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw .badAddress("'\(text)': expected :PORT after the address") }
                portText = rest.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            host = Substring(text)
        }
        guard !host.isEmpty else { throw .badAddress("'\(text)': no host (use HOST:PORT or unix:PATH)") }
        guard let port = portText.map({ UInt16($0) }) ?? defaultPort else {
            throw .badAddress("'\(text)': '\(portText ?? "")' is not a port number (0-65535)")
        }
        return .inet(host: String(host), port: port)
    }
}
