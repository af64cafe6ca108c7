import Glibc

/// A connection's fixed memory: the receive buffer, the iovecs a combined send gathers and the
/// msghdr pointing at them (the kernel reads it after submission, so it must not move). Owned by
/// the connection's actor; freed when the connection goes.
final class NBDConnectionMemory {
    let receiveBuffer: UnsafeMutableRawPointer
    let sendIovecs: UnsafeMutablePointer<iovec>
    let message: UnsafeMutablePointer<msghdr>

    init(receiveCapacity: Int, iovecCapacity: Int) {
        receiveBuffer = .allocate(byteCount: receiveCapacity, alignment: 64)
        sendIovecs = .allocate(capacity: iovecCapacity)
        message = .allocate(capacity: 1)
        message.initialize(to: msghdr())
    }

    deinit {
        receiveBuffer.deallocate()
        sendIovecs.deallocate()
        message.deallocate()
    }
}
