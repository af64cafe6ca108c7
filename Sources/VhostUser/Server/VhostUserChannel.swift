import CStrataShim
import Glibc
import StrataRuntime
import StrataVhostUser

/// The control socket of one front end: messages in (header, payload and the file descriptors
/// that came with them) and replies out, through the calling queue executor's ring. Buffers are
/// made once per connection.
final class VhostUserChannel {
    /// A received message: its header, its payload (valid until the next receive) and its descriptors,
    /// which the receiver owns and must close or keep.
    struct Received {
        var header: VhostUserHeader
        var payload: UnsafeRawBufferPointer
        var descriptors: [Int32]
    }

    /// More descriptors than any message carries: the rest are closed on arrival.
    static let maxDescriptors = 16

    let socket: RingSocket
    private let header = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserHeader.byteCount, alignment: 8)
    private let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserHeader.maxPayloadBytes, alignment: 8)
    private let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserHeader.byteCount + VhostUserHeader.maxPayloadBytes,
                                                               alignment: 8)
    private let controlBytes = strata_cmsg_space_fds(Int32(maxDescriptors))
    private let control: UnsafeMutableRawPointer
    private let descriptorBuffer = UnsafeMutablePointer<Int32>.allocate(capacity: maxDescriptors)
    private let vector = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
    private let message = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)

    init(socket: RingSocket) {
        self.socket = socket
        control = UnsafeMutableRawPointer.allocate(byteCount: controlBytes, alignment: 8)
    }

    deinit {
        header.deallocate()
        payload.deallocate()
        reply.deallocate()
        control.deallocate()
        descriptorBuffer.deallocate()
        vector.deallocate()
        message.deallocate()
    }

    /// The next message, or nil when the front end closed the connection between messages.
    nonisolated(nonsending) func receive() async throws(VhostUserProtocolError) -> Received? {
        vector.pointee = iovec(iov_base: header.baseAddress, iov_len: VhostUserHeader.byteCount)
        message.pointee = msghdr()
        message.pointee.msg_iov = vector
        message.pointee.msg_iovlen = 1
        message.pointee.msg_control = control
        message.pointee.msg_controllen = controlBytes
        let received: Int
        do { received = try await socket.receiveMessage(message) } catch {
            throw VhostUserProtocolError("vhost-user socket: \(error)")
        }
        if received == 0 { return nil }
        let count = strata_cmsg_take_fds(message, descriptorBuffer, Int32(Self.maxDescriptors))
        guard count >= 0 else { throw VhostUserProtocolError("vhost-user socket: file descriptors were cut off (more than \(Self.maxDescriptors))") }
        let descriptors = Array(UnsafeBufferPointer(start: descriptorBuffer, count: Int(count)))
        do {
            if received < VhostUserHeader.byteCount {
                try await socket.receiveExactly(into: header.baseAddress! + received, count: VhostUserHeader.byteCount - received)
            }
            let parsed = try VhostUserHeader.parse(UnsafeRawBufferPointer(header))
            if parsed.size > 0 { try await socket.receiveExactly(into: payload.baseAddress!, count: Int(parsed.size)) }
            return Received(header: parsed, payload: UnsafeRawBufferPointer(rebasing: payload[..<Int(parsed.size)]), descriptors: descriptors)
        } catch {
            for fd in descriptors { close(fd) }
            if let protocolError = error as? VhostUserProtocolError { throw protocolError }
            throw VhostUserProtocolError("vhost-user socket: a message was cut short: \(error)")
        }
    }

    /// Sends a reply to `request`: the header with the reply flag, then what `fill` writes into the
    /// payload (it returns the byte count), with `descriptors` attached.
    nonisolated(nonsending) func sendReply(to request: VhostUserRequest, descriptors: [Int32] = [],
                                           _ fill: (UnsafeMutableRawBufferPointer) -> Int) async throws(VhostUserProtocolError) {
        let size = fill(UnsafeMutableRawBufferPointer(rebasing: reply[VhostUserHeader.byteCount...]))
        precondition(size <= VhostUserHeader.maxPayloadBytes && descriptors.count <= Self.maxDescriptors)
        VhostUserHeader(request: request, flags: VhostUserHeader.version | VhostUserHeader.replyFlag, size: UInt32(size))
            .encode(into: reply)
        let total = VhostUserHeader.byteCount + size
        do {
            var sent = 0
            if !descriptors.isEmpty {
                vector.pointee = iovec(iov_base: reply.baseAddress, iov_len: total)
                message.pointee = msghdr()
                message.pointee.msg_iov = vector
                message.pointee.msg_iovlen = 1
                message.pointee.msg_control = control
                message.pointee.msg_controllen = controlBytes
                descriptors.withUnsafeBufferPointer { strata_cmsg_put_fds(message, $0.baseAddress, Int32($0.count)) }
                sent = try await socket.sendMessage(message)
            }
            if sent < total { try await socket.sendAll(from: reply.baseAddress! + sent, count: total - sent) }
        } catch {
            throw VhostUserProtocolError("vhost-user socket: reply to \(request): \(error)")
        }
    }

    /// A u64 reply (features, queue count, REPLY_ACK's status).
    nonisolated(nonsending) func sendReply(to request: VhostUserRequest, value: UInt64) async throws(VhostUserProtocolError) {
        try await sendReply(to: request) { bytes in
            bytes.storeBytes(of: value.littleEndian, as: UInt64.self)
            return 8
        }
    }
}
