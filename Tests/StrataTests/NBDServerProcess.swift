import Foundation
import Glibc
import StrataNBDServer
import Testing

/// One NBD server process under test: `strata serve ...`, or a peer (`qemu-nbd`, `nbdkit`) for
/// validating a test's expectations. Spawned with posix_spawn, an empty signal mask and default
/// SIGTERM/SIGINT/SIGPIPE dispositions (a child of Foundation's Process may inherit a blocked
/// SIGTERM), stdout on a pipe the readiness check reads, stderr into a log file.
final class NBDServerProcess: @unchecked Sendable {
    enum Readiness {
        /// `strata serve`: one "NBD server listening on ..." line per listener on stdout.
        case listeningLines(Int)
        /// A peer on a Unix socket: the socket accepts a connection.
        case unixSocket(String)
        /// A peer on TCP: 127.0.0.1:port accepts a connection.
        case tcpPort(Int)
        /// Nothing to wait for (a guest, whose output `waitForOutput` watches).
        case started
    }

    enum Endpoint: Equatable {
        case unix(String)
        case tcp(host: String, port: Int)
    }

    let pid: pid_t
    let arguments: [String]
    let logPath: String
    private(set) var endpoints: [Endpoint] = []
    private(set) var stdoutText = ""
    private var stdoutFD: Int32
    private var exitStatus: Int32?

    /// Starts `arguments[0]` (a path, or a name looked up in /usr/bin:/usr/local/bin:PATH) and waits
    /// up to `timeout` seconds for it to be ready; throws (after killing it) when it is not.
    init(_ arguments: [String], readiness: Readiness, logPath: String, timeout: Double = 20) throws {
        self.arguments = arguments
        self.logPath = logPath
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw NBDServerError("pipe: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, logPath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o644)
        posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
        posix_spawn_file_actions_addclose(&actions, pipeFDs[1])
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let executable = Self.resolve(arguments[0])
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = "/usr/bin:/usr/local/bin:" + (environment["PATH"] ?? "/bin")
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var child: pid_t = 0
        let spawned = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        close(pipeFDs[1])
        guard spawned == 0 else {
            close(pipeFDs[0])
            throw NBDServerError("cannot start \(executable): errno \(spawned)")
        }
        pid = child
        stdoutFD = pipeFDs[0]
        _ = fcntl(stdoutFD, F_SETFL, fcntl(stdoutFD, F_GETFL) | O_NONBLOCK)
        do {
            try waitUntilReady(readiness, timeout: timeout)
        } catch {
            stop(timeout: 1)
            throw error
        }
    }

    deinit {
        if exitStatus == nil { stop(timeout: 2) }
        if stdoutFD >= 0 { close(stdoutFD) }
    }

    static func resolve(_ name: String) -> String {
        if name.contains("/") { return name }
        let path = "/usr/bin:/usr/local/bin:/usr/sbin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "")
        for directory in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
            return "\(directory)/\(name)"
        }
        return name
    }

    static func installed(_ name: String) -> Bool { resolve(name).contains("/") }

    /// What the server wrote to stderr so far (for failure messages).
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The first endpoint's URI for an export: nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME.
    func uri(_ name: String = "", endpoint index: Int = 0) -> String {
        switch endpoints[index] {
        case .unix(let path): "nbd+unix:///\(name)?socket=\(path)"
        case .tcp(let host, let port): "nbd://\(host):\(port)/\(name)"
        }
    }

    private func waitUntilReady(_ readiness: Readiness, timeout: Double) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = reap(wait: false) {
                throw NBDServerError("\(arguments[0]) exited with status \(status) before it was ready: \(log) \(stdoutText)")
            }
            switch readiness {
            case .listeningLines(let count):
                readStdout()
                let lines = stdoutText.split(separator: "\n").filter { $0.contains("NBD server listening on ") }
                if lines.count >= count {
                    endpoints = lines.map { line in
                        let address = String(line[line.range(of: "listening on ")!.upperBound...]).trimmingCharacters(in: .whitespaces)
                        if address.hasPrefix("unix:") { return .unix(String(address.dropFirst(5))) }
                        let colon = address.lastIndex(of: ":")!
                        return .tcp(host: String(address[..<colon]), port: Int(address[address.index(after: colon)...]) ?? -1)
                    }
                    return
                }
                var descriptor = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, 50)
            case .unixSocket(let path):
                if let fd = NBDSocket.connectUnix(path) {
                    close(fd)
                    endpoints = [.unix(path)]
                    return
                }
                usleep(20_000)
            case .started:
                return
            case .tcpPort(let port):
                if let fd = NBDSocket.connectTCP(port: port) {
                    close(fd)
                    endpoints = [.tcp(host: "127.0.0.1", port: port)]
                    return
                }
                usleep(20_000)
            }
        }
        throw NBDServerError("\(arguments.joined(separator: " ")) was not ready within \(timeout) s; stdout: \(stdoutText) stderr: \(log)")
    }

    /// Reads standard output until it contains `text` (true), the process exits or `timeout`
    /// seconds pass (false). `stdoutText` holds everything read so far.
    func waitForOutput(_ text: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            readStdout()
            if stdoutText.contains(text) { return true }
            if reap(wait: false) != nil {
                readStdout()
                return stdoutText.contains(text)
            }
            var descriptor = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, 100)
        }
        return false
    }

    private func readStdout() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(stdoutFD, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            stdoutText += String(decoding: buffer[0..<n], as: UTF8.self)
        }
    }

    /// The exit status (or 128 + signal) once the process has exited, nil while it runs.
    @discardableResult
    func reap(wait: Bool) -> Int32? {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        let result = waitpid(pid, &status, wait ? 0 : WNOHANG)
        guard result == pid else { return nil }
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        exitStatus = code
        return code
    }

    /// Sends `signal` and waits up to `timeout` seconds for the exit; then SIGKILL. Returns the
    /// exit status (128 + 9 when it had to be killed) and whether it exited in time by itself.
    @discardableResult
    func stop(signal: Int32 = SIGTERM, timeout: Double = 10) -> (status: Int32, inTime: Bool) {
        if let exitStatus { return (exitStatus, true) }
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = reap(wait: false) { return (status, true) }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        return (reap(wait: true) ?? 137, false)
    }

    /// Open file descriptors of the process (entries of /proc/PID/fd).
    var openFDCount: Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }

    /// Resident set size in KiB (VmRSS of /proc/PID/status).
    var rssKiB: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return -1 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
    }
}

struct NBDServerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Blocking client sockets for the tests (Unix and TCP on 127.0.0.1).
enum NBDSocket {
    static func connectUnix(_ path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result != 0 { close(fd); return nil }
        return fd
    }

    static func connectTCP(port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 { close(fd); return nil }
        return fd
    }

    /// A TCP port that was free a moment ago (for peers that cannot be told port 0).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                _ = bind(fd, pointer, length)
                return getsockname(fd, pointer, &length)
            }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    /// Exactly `count` bytes, or nil on EOF, error or a `timeout` (seconds) without progress.
    static func receiveExactly(_ fd: Int32, _ count: Int, timeout: Int32 = 5) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var have = 0
        while have < count {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, timeout * 1000) > 0 else { return nil }
            let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, count - have, 0) }
            if n <= 0 { return nil }
            have += n
        }
        return bytes
    }

    /// True when the peer closes the connection (EOF or reset) within `timeout` seconds, reading
    /// and discarding anything it still sends.
    static func closedByPeer(_ fd: Int32, timeout: Int32 = 5) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(Double(timeout))
        while Date() < deadline {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 200) >= 0 else { return true }
            if descriptor.revents == 0 { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return true }
        }
        return false
    }
}

/// The server the NBD acceptance tests run against: `strata serve` (the default), or, to check a
/// test's own expectations, a peer named by STRATA_NBD_TEST_PEER=qemu-nbd|nbdkit (one export per
/// process; tests that need more skip themselves under a peer).
enum NBDTestServer {
    struct ExportSpec {
        var name: String
        var image: String
        var format: String = "raw"
        var writable = false
        var description: String?
        var allocationDepth = false
        /// A qcow2 image's backing image: Strata's graph names backing nodes explicitly.
        var backing: String?
    }

    enum Listener {
        case unix(String)
        case tcp
    }

    static var peer: String? {
        let value = ProcessInfo.processInfo.environment["STRATA_NBD_TEST_PEER"] ?? ""
        return value.isEmpty ? nil : value
    }

    /// Starts a server exporting `exports` on `listener`; `extra` arguments go to `strata serve` only.
    static func start(_ exports: [ExportSpec], on listener: Listener, scratch: ScratchDirectory, extra: [String] = []) throws -> NBDServerProcess {
        let log = scratch.path("server-\(UInt32.random(in: 0...UInt32.max)).log")
        switch peer {
        case nil:
            var arguments = [CommandLineTests.binary, "serve"]
            for (index, export) in exports.enumerated() {
                // A read-only export opens its nodes read-only, as qemu-nbd -r does, so other
                // readers of the image (qemu-img map) are not locked out.
                let readOnly = export.writable ? "" : #","read-only":true"#
                var backing = ""
                if let base = export.backing {
                    arguments += ["--blockdev", #"{"driver":"file","node-name":"base-file\#(index)","filename":"\#(base)","read-only":true}"#]
                    arguments += ["--blockdev", #"{"driver":"qcow2","node-name":"base\#(index)","file":"base-file\#(index)","read-only":true}"#]
                    backing = #","backing":"base\#(index)""#
                }
                arguments += ["--blockdev", #"{"driver":"file","node-name":"file\#(index)","filename":"\#(export.image)"\#(readOnly)}"#]
                arguments += ["--blockdev", #"{"driver":"\#(export.format)","node-name":"node\#(index)","file":"file\#(index)"\#(readOnly)\#(backing)}"#]
            }
            switch listener {
            case .unix(let path): arguments += ["--nbd-server", "addr.type=unix,addr.path=\(path)"]
            case .tcp: arguments += ["--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0"]
            }
            for (index, export) in exports.enumerated() {
                var option = "type=nbd,id=export\(index),node-name=node\(index),name=\(export.name),writable=\(export.writable ? "on" : "off")"
                if let description = export.description { option += ",description=\(description)" }
                if export.allocationDepth { option += ",allocation-depth=on" }
                arguments += ["--export", option]
            }
            return try NBDServerProcess(arguments + extra, readiness: .listeningLines(1), logPath: log)
        case "nbdkit":
            let export = exports[0]
            var arguments = ["nbdkit", "-f", "--exit-with-parent"]
            if !export.writable { arguments.append("-r") }
            if let description = export.description { arguments += ["-D", "nbdkit.export_description=\(description)"] }
            let readiness: NBDServerProcess.Readiness
            switch listener {
            case .unix(let path): arguments += ["-U", path]; readiness = .unixSocket(path)
            case .tcp: let port = NBDSocket.freePort(); arguments += ["-i", "127.0.0.1", "-p", "\(port)"]; readiness = .tcpPort(port)
            }
            return try NBDServerProcess(arguments + ["file", export.image], readiness: readiness, logPath: log)
        default:
            let export = exports[0]
            var arguments = ["qemu-nbd", "-t", "-f", export.format, "-x", export.name]
            if !export.writable { arguments.append("-r") }
            if let description = export.description { arguments += ["-D", description] }
            if export.allocationDepth { arguments.append("-A") }
            let readiness: NBDServerProcess.Readiness
            switch listener {
            case .unix(let path): arguments += ["-k", path]; readiness = .unixSocket(path)
            case .tcp: let port = NBDSocket.freePort(); arguments += ["-b", "127.0.0.1", "-p", "\(port)"]; readiness = .tcpPort(port)
            }
            return try NBDServerProcess(arguments + [export.image], readiness: readiness, logPath: log)
        }
    }
}
