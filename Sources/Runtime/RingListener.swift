import CStrataShim
import Glibc

/// A listening stream socket (Unix path or TCP host:port) whose `accept` goes through the calling
/// queue executor's ring. Creating it is control-path work and uses plain blocking calls.
public final class RingListener: Sendable {
    public let fd: Int32
    /// The socket file a Unix listener created; removed again by `close()`.
    public let unixPath: String?
    /// The bound TCP port (the kernel's choice when asked for port 0), nil for Unix sockets.
    public let port: UInt16?

    private init(fd: Int32, unixPath: String?, port: UInt16?) {
        self.fd = fd
        self.unixPath = unixPath
        self.port = port
    }

    /// Listens on a Unix socket at `path`. An existing file there is an error (EADDRINUSE): the
    /// caller decides whether a stale socket may be removed.
    public static func unix(path: String, backlog: Int32 = 128) throws(SystemError) -> RingListener {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { throw SystemError("unix socket path \(path)", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let fd = try openListening(family: AF_UNIX, reuseAddress: false, backlog: backlog, description: path) { fd in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        return RingListener(fd: fd, unixPath: path, port: nil)
    }

    /// Listens on TCP `host`:`port` (a name or numeric IPv4/IPv6 address; port 0 picks a free
    /// one, reported by `port`). SO_REUSEADDR lets a restarted server bind while old connections
    /// sit in TIME_WAIT.
    public static func tcp(host: String, port: UInt16, backlog: Int32 = 128) throws(SystemError) -> RingListener {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var list: UnsafeMutablePointer<addrinfo>?
        let lookup = getaddrinfo(host, String(port), &hints, &list)
        guard lookup == 0, let first = list else {
            // getaddrinfo's codes are not errnos; EADDRNOTAVAIL is the nearest one that says "no such address".
            throw SystemError("resolve \(host): \(String(cString: gai_strerror(lookup)))", errno: lookup == EAI_SYSTEM ? errno : EADDRNOTAVAIL)
        }
        defer { freeaddrinfo(list) }
        var lastError = SystemError("listen on \(host):\(port)", errno: EADDRNOTAVAIL)
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            do {
                let fd = try openListening(family: info.pointee.ai_family, reuseAddress: true, backlog: backlog, description: "\(host):\(port)") { fd in
                    bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen)
                }
                return RingListener(fd: fd, unixPath: nil, port: boundPort(fd))
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// socket + options + bind + listen, closing the socket on any failure.
    private static func openListening(
        family: Int32, reuseAddress: Bool, backlog: Int32, description: String, bindSocket: (Int32) -> Int32
    ) throws(SystemError) -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket for \(description)", errno: errno) }
        if reuseAddress {
            var one: Int32 = 1
            guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
                let error = SystemError("SO_REUSEADDR on \(description)", errno: errno)
                Glibc.close(fd)
                throw error
            }
        }
        guard bindSocket(fd) == 0 else {
            let error = SystemError("bind \(description)", errno: errno)
            Glibc.close(fd)
            throw error
        }
        guard listen(fd, backlog) == 0 else {
            let error = SystemError("listen on \(description)", errno: errno)
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    private static func boundPort(_ fd: Int32) -> UInt16? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        let family = Int32(storage.ss_family)
        return withUnsafeBytes(of: &storage) { raw -> UInt16? in
            switch family {
            case AF_INET: return UInt16(bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_port)!, as: UInt16.self))
            case AF_INET6: return UInt16(bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \.sin6_port)!, as: UInt16.self))
            default: return nil
            }
        }
    }

    /// Waits for the next connection; it arrives with CLOEXEC set so children never inherit it.
    public nonisolated(nonsending) func accept() async throws(SystemError) -> RingSocket {
        let executor = RingSocket.currentExecutor("accept")
        let fd = self.fd
        let flags = Int32(SOCK_CLOEXEC.rawValue)
        while true {
            let result = await executor.perform { io_uring_prep_accept($0, fd, nil, nil, flags) }
            if result >= 0 { return RingSocket(fd: result) }
            // A connection reset before it was accepted, or a signal: the listener is still good.
            if result == -EINTR || result == -ECONNABORTED { continue }
            throw SystemError("accept", errno: -result)
        }
    }

    /// Stops listening and removes a Unix socket file. An accept still waiting in a ring is not
    /// woken by close (io_uring holds its own file reference): call `shutdown()` first for that.
    public func close() {
        Glibc.close(fd)
        if let unixPath { unlink(unixPath) }
    }

    /// Wakes accepts waiting in a ring (they complete with EINVAL) without closing the descriptor.
    public func shutdown() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }
}
