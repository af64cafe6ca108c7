import Dispatch
import Glibc
import StrataEngine
import StrataGraph
import StrataNBDServer

/// A live NBD server for the `nbd-server-stream` target: a writable 64 MiB null-co export
/// "disk" on a unix socket, started once per process. Each input goes to it over a new
/// connection, as a client's whole byte stream, so the handshake, the request pipeline, the
/// replies and the connection's teardown all see it; the server must answer and close, never
/// crash or hang.
enum NBDServerUnderFuzz {
    private static let started: (daemon: StorageDaemon, path: String) = {
        let path = "/tmp/strata-fuzz-nbd-\(getpid()).sock"
        unlink(path)
        let node: JSONValue = .object(["type": "blockdev-add", "data": .object([
            "driver": "null-co", "node-name": "disk", "size": .int(64 << 20), "read-zeroes": true,
        ])])
        let plan = StorageDaemon.Plan(queueCount: 1, blockdevActions: [node],
                                      nbdListeners: [StorageDaemon.NBDListener(address: .unix(path: path))],
                                      nbdExports: [NBDExportOptions(id: "disk", nodeName: "disk", writable: true)],
                                      handshakeLimitSeconds: 5)
        do {
            let daemon = try StorageDaemon(plan: plan, log: { _ in })
            FuzzTarget.runBlocking { _ = try? await daemon.start() }
            return (daemon, path)
        } catch {
            fatalError("the NBD server under fuzz did not start: \(error)")
        }
    }()

    /// The client's side of a handshake that reaches transmission: flags FIXED_NEWSTYLE and
    /// NO_ZEROES, structured replies, then NBD_OPT_GO for "disk".
    private static let handshake: [UInt8] = {
        func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
        let optionMagic: UInt64 = 0x4948_4156_454F_5054
        let name = Array("disk".utf8)
        return be(UInt32(3)) + be(optionMagic) + be(UInt32(8)) + be(UInt32(0))
            + be(optionMagic) + be(UInt32(7)) + be(UInt32(4 + name.count + 2)) + be(UInt32(name.count)) + name + be(UInt16(0))
    }()

    /// An odd first byte puts a valid handshake before the rest, so most inputs test requests.
    static func run(_ bytes: UnsafeRawBufferPointer) {
        guard let first = bytes.first else { return }
        let stream = (first & 1 == 1 ? handshake : []) + Array(bytes.dropFirst())
        let fd = connectUnix(started.path)
        defer { close(fd) }
        let drained = DispatchSemaphore(value: 0)
        // Replies are read while the input is sent: a server blocked writing to a full socket
        // stops reading, and a client that only sent would wait for it for ever.
        DispatchQueue.global().async {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
            drained.signal()
        }
        var sent = 0
        while sent < stream.count {
            let count = stream.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count <= 0 { break }  // the server closed: it refused the stream
            sent += count
        }
        shutdown(fd, Int32(SHUT_WR))
        if drained.wait(timeout: .now() + 20) == .timedOut {
            fatalError("the NBD server neither finished nor closed the connection within 20 s of the client's end")
        }
    }

    private static func connectUnix(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        precondition(fd >= 0, "socket: \(String(cString: strerror(errno)))")
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8.prefix(raw.count - 1))
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(result == 0, "connect \(path): \(String(cString: strerror(errno)))")
        return fd
    }
}
