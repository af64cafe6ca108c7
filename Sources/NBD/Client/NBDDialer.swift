import Glibc
import StrataNBD
import StrataRuntime

/// Opens one connection to an endpoint: a socket connected through the calling queue executor's
/// ring, then the client handshake (structured replies, base:allocation, GO with block sizes).
enum NBDDialer {
    /// Option replies are at most 16 KiB; a bigger buffer only saves receive calls.
    private static let receiveBytes = NBDClientHandshake.maxReplyBytes + 1024

    /// `track` is told the socket while it dials (and nil after), so a closing node can shut it
    /// down and wake a handshake stuck on a silent server. Runs on a queue executor.
    static nonisolated(nonsending) func dial(
        _ endpoint: NBDEndpoint, track: (Int32?) -> Void
    ) async throws(NBDDialError) -> (RingSocket, NBDClientNegotiation) {
        var lastError = "no address to connect to"
        for address in endpoint.addresses {
            let fd: Int32
            do {
                fd = try address.makeSocket()
            } catch {
                lastError = "\(error)"
                continue
            }
            track(fd)
            let result = await address.connect(fd)
            if result < 0 {
                track(nil)
                Glibc.close(fd)
                lastError = String(cString: strerror(-result))
                continue
            }
            do throws(NBDDialError) {
                let negotiation = try await negotiate(RingSocket(fd: fd), endpoint: endpoint)
                track(nil)
                return (RingSocket(fd: fd), negotiation)
            } catch {
                track(nil)
                Glibc.close(fd)
                throw error
            }
        }
        throw NBDDialError(message: "Could not connect to NBD server \(endpoint.server): \(lastError)")
    }

    private static nonisolated(nonsending) func negotiate(_ socket: RingSocket, endpoint: NBDEndpoint) async throws(NBDDialError) -> NBDClientNegotiation {
        func failure(_ text: String) -> NBDDialError { NBDDialError(message: "NBD server \(endpoint.server): \(text)") }
        var handshake = NBDClientHandshake(exportName: endpoint.exportName)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: receiveBytes, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let outbound = handshake.takeOutbound()
            if !outbound.isEmpty {
                // The handshake's messages are small; a copy keeps the bytes still across the await.
                let out = UnsafeMutableRawPointer.allocate(byteCount: outbound.count, alignment: 16)
                defer { out.deallocate() }
                outbound.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: outbound.count) }
                do {
                    try await socket.sendAll(from: out, count: outbound.count)
                } catch {
                    throw failure("negotiation failed: \(error)")
                }
            }
            switch handshake.state {
            case .connected(let negotiation):
                return negotiation
            case .failed(let error):
                throw failure(error.message)
            case .finished:
                throw failure("negotiation ended without opening the export")
            case .negotiating:
                let count: Int
                do {
                    count = try await socket.receive(into: buffer, count: receiveBytes)
                } catch {
                    throw failure("negotiation failed: \(error)")
                }
                if count == 0 { throw failure("server closed the connection during negotiation") }
                let used = handshake.feed(UnsafeRawBufferPointer(start: buffer, count: count))
                // The server speaks in transmission only when asked: extra bytes mean it is out of step.
                if used < count { throw failure("server sent \(count - used) unexpected bytes after negotiation") }
            }
        }
    }
}
