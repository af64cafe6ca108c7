import Glibc
import StrataNBD

/// One request slot of a connection: an aligned buffer whose front holds reply headers and whose
/// data area (4 KiB aligned, for O_DIRECT) holds the payload, and the iovecs of the reply being
/// sent. A worker serves one request at a time and keeps its buffer, so steady state allocates
/// nothing. Owned by its connection's actor; never shared.
final class NBDRequestWorker {
    /// Header room in front of the data: room for a reply's chunk headers (one per read chunk) and
    /// an error chunk, and a multiple of the 4 KiB alignment so the data area stays aligned.
    static let headerRoom = 8192
    static let errorChunkOffset = 4096
    static let maxErrorMessageBytes = 1024
    /// A read is answered in at most this many chunks (data and holes), each with a header and
    /// at most one data iovec; the rest of a fragmented range goes out as data.
    static let maxReadChunks = 16
    static let maxIovecs = 2 * maxReadChunks + 2
    /// Buffers grown past this for one large request are given back afterwards.
    static let retainedDataBytes = 4 << 20

    private(set) var buffer: UnsafeMutableRawPointer?
    private(set) var dataCapacity = 0
    let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: maxIovecs)
    var iovecCount = 0
    /// Set while the worker waits for another worker to send its reply.
    var sendWaiter: UnsafeContinuation<Bool, Never>?

    deinit {
        free(buffer)
        iovecs.deallocate()
    }

    /// The data area; valid after `reserve`.
    var data: UnsafeMutableRawPointer { buffer! + Self.headerRoom }

    /// Header room as a raw buffer starting `offset` bytes in.
    func header(at offset: Int, count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(offset >= 0 && offset + count <= Self.headerRoom)
        return UnsafeMutableRawBufferPointer(start: buffer! + offset, count: count)
    }

    /// Makes the data area at least `bytes` long; false when memory ran out.
    func reserve(_ bytes: Int) -> Bool {
        if buffer != nil && bytes <= dataCapacity { return true }
        let capacity = max(64 << 10, (bytes + 4095) & ~4095)
        var fresh: UnsafeMutableRawPointer?
        guard posix_memalign(&fresh, 4096, Self.headerRoom + capacity) == 0, let fresh else { return false }
        free(buffer)
        buffer = fresh
        dataCapacity = capacity
        return true
    }

    /// Gives back a buffer one large request grew.
    func trim() {
        guard dataCapacity > Self.retainedDataBytes else { return }
        free(buffer)
        buffer = nil
        dataCapacity = 0
    }

    func append(_ base: UnsafeMutableRawPointer, _ count: Int) {
        precondition(iovecCount < Self.maxIovecs)
        iovecs[iovecCount] = iovec(iov_base: base, iov_len: count)
        iovecCount += 1
    }

    // MARK: Replies

    func simpleReply(cookie: UInt64, error: NBDErrno?) {
        iovecCount = 0
        NBDReplyEncoder.simpleReply(cookie: cookie, error: error, into: header(at: 0, count: NBDReplyEncoder.simpleReplyBytes))
        append(buffer!, NBDReplyEncoder.simpleReplyBytes)
    }

    /// A simple reply followed by `length` bytes of data already in the data area: the header goes
    /// right in front of the data so both leave in one iovec.
    func simpleReadReply(cookie: UInt64, length: Int) {
        iovecCount = 0
        let start = Self.headerRoom - NBDReplyEncoder.simpleReplyBytes
        NBDReplyEncoder.simpleReply(cookie: cookie, error: nil, into: header(at: start, count: NBDReplyEncoder.simpleReplyBytes))
        append(buffer! + start, NBDReplyEncoder.simpleReplyBytes + length)
    }

    /// One OFFSET_DATA chunk (DONE) over the whole data area, header in front of the data.
    func dataReply(cookie: UInt64, offset: UInt64, length: Int) {
        iovecCount = 0
        let start = Self.headerRoom - NBDReplyEncoder.offsetDataHeaderBytes
        NBDReplyEncoder.offsetDataHeader(cookie: cookie, offset: offset, dataLength: UInt32(length), done: true,
                                         into: header(at: start, count: NBDReplyEncoder.offsetDataHeaderBytes))
        append(buffer! + start, NBDReplyEncoder.offsetDataHeaderBytes + length)
    }

    /// A structured reply with nothing to carry (a zero-length read): one NONE chunk with DONE.
    func noneReply(cookie: UInt64) {
        iovecCount = 0
        NBDReplyEncoder.none(cookie: cookie, into: header(at: 0, count: NBDReplyEncoder.noneBytes))
        append(buffer!, NBDReplyEncoder.noneBytes)
    }

    /// An ERROR chunk (DONE) carrying `message`, cut to a bounded length.
    func errorReply(cookie: UInt64, error: NBDErrno, message: String) {
        iovecCount = 0
        var text = message
        if text.utf8.count > Self.maxErrorMessageBytes { text = String(decoding: text.utf8.prefix(Self.maxErrorMessageBytes), as: UTF8.self) }
        let room = header(at: Self.errorChunkOffset, count: Self.headerRoom - Self.errorChunkOffset)
        let count = NBDReplyEncoder.errorChunk(cookie: cookie, error: error, message: text, done: true, into: room)
        append(buffer! + Self.errorChunkOffset, count)
    }
}
