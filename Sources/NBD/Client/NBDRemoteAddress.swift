import Glibc
import StrataRuntime

/// Where an NBD server listens, as QEMU's SocketAddress for the nbd driver: TCP host and port
/// (a number or a service name) or a Unix socket path.
public enum NBDRemoteAddress: Sendable, Hashable, CustomStringConvertible {
    case inet(host: String, port: String)
    case unix(path: String)

    /// IANA's port for NBD, QEMU's default.
    public static let defaultPort = "10809"

    public var description: String {
        switch self {
        case .inet(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }

    /// The socket addresses to try in order. Resolved once, when the node opens: reconnects and
    /// per-queue connections reuse the result instead of blocking a queue thread in getaddrinfo.
    func resolve() throws(SystemError) -> [NBDSocketAddress] {
        switch self {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                throw SystemError("unix socket path '\(path)'", errno: ENAMETOOLONG)
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in bytes.enumerated() { raw[index] = byte }
            }
            let raw = withUnsafeBytes(of: &address) { Array($0) }
            return [NBDSocketAddress(family: AF_UNIX, bytes: raw)]
        case .inet(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            let lookup = getaddrinfo(host, port, &hints, &list)
            guard lookup == 0, list != nil else {
                // getaddrinfo's codes are not errnos; EADDRNOTAVAIL says "no such address".
                throw SystemError("resolve \(description): \(String(cString: gai_strerror(lookup)))",
                                  errno: lookup == EAI_SYSTEM ? errno : EADDRNOTAVAIL)
            }
            defer { freeaddrinfo(list) }
            var addresses: [NBDSocketAddress] = []
            var candidate = list
            while let info = candidate {
                candidate = info.pointee.ai_next
                guard let address = info.pointee.ai_addr else { continue }
                let bytes = Array(UnsafeRawBufferPointer(start: address, count: Int(info.pointee.ai_addrlen)))
                addresses.append(NBDSocketAddress(family: info.pointee.ai_family, bytes: bytes))
            }
            return addresses
        }
    }
}
