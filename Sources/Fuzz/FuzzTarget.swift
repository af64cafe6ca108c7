import Dispatch
import StrataGraph
import StrataNBD
import StrataNodes
import StrataRuntime
import StrataVhostUser

/// The parsers of hostile input, each fed arbitrary bytes. A target returns normally for any
/// input, accepted or refused; a crash, a trap or a hang is the finding.
enum FuzzTarget: String, CaseIterable {
    /// QMP commands and blockdev options: the JSON reader.
    case json
    /// The NBD server's handshake (option haggling) from a client.
    case nbdServerHandshake = "nbd-server-handshake"
    /// NBD request headers from a client in transmission.
    case nbdRequest = "nbd-request"
    /// A client's whole byte stream to a live NBD server, through a connection.
    case nbdServerStream = "nbd-server-stream"
    /// The NBD client's reply stream from a server, with requests in flight.
    case nbdReplies = "nbd-replies"
    /// vhost-user messages from a front end: the header, then the payload it announces.
    case vhostUser = "vhost-user"
    /// A qcow2 header (and its extensions) read from an image file.
    case qcow2Header = "qcow2-header"
    /// A whole (small) qcow2 image: loaded by the offline tools, then checked as `qemu-img check`.
    case qcow2Check = "qcow2-check"

    func run(_ bytes: UnsafeRawBufferPointer) {
        switch self {
        case .json:
            _ = try? JSONValue.parse(String(decoding: bytes, as: UTF8.self))
        case .nbdServerHandshake:
            let export = NBDExport(name: "disk", sizeBytes: 1 << 30)
            var handshake = NBDServerHandshake(catalog: NBDExportList([export]))
            // Fed in two pieces, so messages cut in half are exercised as well as whole ones; what
            // a feed leaves unconsumed comes again with the next piece, as the server does.
            let split = bytes.count / 2
            let (consumed, _) = handshake.feed(UnsafeRawBufferPointer(rebasing: bytes[..<split]))
            _ = handshake.feed(UnsafeRawBufferPointer(rebasing: bytes[consumed...]))
        case .nbdRequest:
            var offset = 0
            while offset + NBDRequest.headerBytes <= bytes.count {
                _ = try? NBDRequest.parse(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + NBDRequest.headerBytes]))
                offset += NBDRequest.headerBytes
            }
        case .nbdServerStream:
            NBDServerUnderFuzz.run(bytes)
        case .nbdReplies:
            var parser = NBDReplyParser(structuredReplies: true, contextIDs: [1])
            try? parser.expect(NBDRequest(command: .read, cookie: 0, offset: 0, length: 65536))
            try? parser.expect(NBDRequest(command: .blockStatus, cookie: 1, offset: 0, length: 1 << 20))
            try? parser.expect(NBDRequest(command: .write, cookie: 2, offset: 4096, length: 4096))
            _ = try? parser.feed(bytes)
        case .vhostUser:
            var offset = 0
            while offset + VhostUserHeader.byteCount <= bytes.count {
                guard let header = try? VhostUserHeader.parse(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + VhostUserHeader.byteCount])) else { return }
                offset += VhostUserHeader.byteCount
                let size = Int(header.size)
                guard offset + size <= bytes.count else { return }
                _ = try? VhostUserMessage.parse(header, payload: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + size]), descriptorCount: 1)
                offset += size
            }
        case .qcow2Header:
            _ = try? Qcow2Header(parsing: Array(bytes), fileSize: 1 << 30, node: "fuzz")
        case .qcow2Check:
            let image = MemoryImage(Array(bytes))
            FuzzTarget.runBlocking {
                _ = try? await Qcow2OfflineImage.load(io: image, name: "fuzz")
                _ = try? await Qcow2Checker.check(io: image, filename: "fuzz", repair: nil)
            }
        }
    }
}

extension FuzzTarget {
    /// Runs async parser code to the end from libFuzzer's synchronous callback.
    static func runBlocking(_ body: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            await body()
            done.signal()
        }
        done.wait()
    }
}

/// An image file in memory; bytes past its end read as zeros, as a file's do.
final class MemoryImage: Qcow2ImageIO {
    private let bytes: Locked<[UInt8]>

    init(_ bytes: [UInt8]) { self.bytes = Locked(bytes) }

    func sizeBytes() async throws -> UInt64 { UInt64(bytes.withLock { $0.count }) }

    func read(offset: UInt64, count: Int) async throws -> [UInt8] {
        bytes.withLock { bytes in
            var result = [UInt8](repeating: 0, count: count)
            guard offset < UInt64(bytes.count) else { return result }
            let available = min(count, bytes.count - Int(offset))
            for index in 0..<available { result[index] = bytes[Int(offset) + index] }
            return result
        }
    }

    func write(offset: UInt64, bytes written: [UInt8]) async throws {}
    func flush() async throws {}
    func truncate(to sizeBytes: UInt64) async throws {}
}
