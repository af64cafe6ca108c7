import Glibc
import StrataGraph
import StrataRuntime

/// A small blocking QMP client, for `strata qmp` and for scripts: connects, negotiates
/// capabilities, sends commands and reads replies, keeping events that arrive in between.
public final class QMPClient {
    public struct Reply: Sendable {
        public let message: [String: JSONValue]
        public var isError: Bool { message["error"] != nil }
        public var result: JSONValue? { message["return"] }
        public var error: (errorClass: String, desc: String)? {
            guard case .object(let fields)? = message["error"] else { return nil }
            guard case .string(let errorClass)? = fields["class"], case .string(let desc)? = fields["desc"] else { return ("", "") }
            return (errorClass, desc)
        }
    }

    public enum ClientError: Error, CustomStringConvertible {
        case connect(String)
        case closed
        case protocolError(String)

        public var description: String {
            switch self {
            case .connect(let text): "cannot connect: \(text)"
            case .closed: "the monitor closed the connection"
            case .protocolError(let text): "unexpected message from the monitor: \(text)"
            }
        }
    }

    private let fd: Int32
    private var framer = QMPFramer()
    private var pending: [[String: JSONValue]] = []
    /// Events received so far and not yet taken.
    public private(set) var events: [[String: JSONValue]] = []
    public private(set) var greeting: [String: JSONValue] = [:]

    /// Connects to `unix:PATH`, a bare path, or `HOST:PORT`, and negotiates capabilities.
    public init(address: String) throws {
        fd = try Self.connect(address)
        do {
            greeting = try nextMessage()
            guard greeting["QMP"] != nil else { throw ClientError.protocolError("no greeting") }
            let reply = try execute("qmp_capabilities")
            if let error = reply.error { throw ClientError.protocolError("qmp_capabilities: \(error.desc)") }
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    deinit { Glibc.close(fd) }

    /// Sends one command and returns its reply; events that arrive first are kept in `events`.
    public func execute(_ command: String, arguments: [String: JSONValue] = [:]) throws -> Reply {
        var message: [String: JSONValue] = ["execute": .string(command)]
        if !arguments.isEmpty { message["arguments"] = .object(arguments) }
        try send(JSONValue.object(message).ordered.compactText() + "\n")
        while true {
            let next = try nextMessage()
            if next["event"] != nil {
                events.append(next)
                continue
            }
            return Reply(message: next)
        }
    }

    /// Waits for event `name` (or returns one already received), up to `timeoutSeconds`.
    public func waitForEvent(_ name: String, timeoutSeconds: Double) throws -> [String: JSONValue]? {
        let deadline = Double(MonotonicClock.now()) / 1e9 + timeoutSeconds
        while true {
            if let index = events.firstIndex(where: { $0["event"] == .string(name) }) { return events.remove(at: index) }
            let left = deadline - Double(MonotonicClock.now()) / 1e9
            guard left > 0 else { return nil }
            // Messages already read (with a reply, in one recv) come first: the socket may have
            // nothing more to say.
            if pending.isEmpty {
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&poller, 1, Int32(min(left, 3600) * 1000) + 1) <= 0 { continue }
            }
            let message = try nextMessage()
            if message["event"] != nil { events.append(message) }
        }
    }

    private func send(_ text: String) throws {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let result = bytes.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw ClientError.closed }
            done += result
        }
    }

    private func nextMessage() throws -> [String: JSONValue] {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while pending.isEmpty {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw ClientError.closed }
            let pieces = buffer.withUnsafeBytes { framer.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            for piece in pieces {
                guard case .message(let text) = piece, case .object(let fields)? = try? JSONValue.parse(text) else {
                    throw ClientError.protocolError("\(piece)")
                }
                pending.append(fields)
            }
        }
        return pending.removeFirst()
    }

    static func connect(_ address: String) throws -> Int32 {
        var path = address
        if path.hasPrefix("unix:") { path.removeFirst(5) }
        if !path.contains("/"), let colon = path.lastIndex(of: ":"), let port = UInt16(path[path.index(after: colon)...]) {
            return try connectTCP(host: String(path[..<colon]), port: port)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError.connect("socket: errno \(errno)") }
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: socketAddress.sun_path) else {
            Glibc.close(fd)
            throw ClientError.connect("\(path): path too long")
        }
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { raw in for (index, byte) in bytes.enumerated() { raw[index] = byte } }
        let result = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let code = errno
            Glibc.close(fd)
            throw ClientError.connect("\(path): \(String(cString: strerror(code)))")
        }
        return fd
    }

    private static func connectTCP(host: String, port: UInt16) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { throw ClientError.connect("\(host): cannot resolve") }
        defer { freeaddrinfo(list) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError.connect("socket: errno \(errno)") }
        guard Glibc.connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw ClientError.connect("\(host):\(port): \(String(cString: strerror(code)))")
        }
        return fd
    }
}
