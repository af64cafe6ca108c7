import StrataGraph
import StrataNBD
import StrataRuntime

// The handshake phase: fixed newstyle negotiation until the client picks an export.
extension NBDConnection {
    func handshake() async -> NBDNegotiatedSession? {
        var machine = NBDServerHandshake(catalog: server.exports)
        if server.isShuttingDown { machine.beginShutdown() }
        while true {
            let available = UnsafeRawBufferPointer(start: receiveBuffer + receiveStart, count: receiveEnd - receiveStart)
            let (consumed, events) = machine.feed(available)
            receiveStart += consumed
            let outbound = machine.takeOutbound()
            if !outbound.isEmpty {
                let copy = UnsafeMutableRawPointer.allocate(byteCount: outbound.count, alignment: 16)
                defer { copy.deallocate() }
                outbound.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                do { try await socket.sendAll(from: copy, count: outbound.count) } catch { return nil }
            }
            for event in events {
                switch event {
                case .transmission(let negotiated): return negotiated
                case .aborted: return nil
                case .disconnect(let reason):
                    server.log("NBD client \(number): \(reason)")
                    return nil
                default: break
                }
            }
            guard await receiveMore() else { return nil }
        }
    }

    /// Reads more bytes after those buffered, compacting first; false at EOF or on an error.
    func receiveMore() async -> Bool {
        if receiveStart == receiveEnd {
            receiveStart = 0
            receiveEnd = 0
        } else if receiveEnd == Self.receiveCapacity {
            let pending = receiveEnd - receiveStart
            (receiveBuffer).copyMemory(from: receiveBuffer + receiveStart, byteCount: pending)
            receiveStart = 0
            receiveEnd = pending
        }
        do {
            let received = try await socket.receive(into: receiveBuffer + receiveEnd, count: Self.receiveCapacity - receiveEnd)
            receiveEnd += received
            return received > 0
        } catch {
            return false
        }
    }
}
