import CStrataShim
import Glibc
import StrataNBD
import StrataRuntime

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
    var sendWaiter: ParkedContinuation<Bool>?
    /// The reply is queued and no sender has finished with it yet.
    var replyQueued = false
    /// The worker's pipe for spliced reads (read end, write end), made on first use.
    private(set) var pipe: (read: Int32, write: Int32)?
    private(set) var pipeCapacity = 0
    /// Bytes of the reply waiting in the pipe, sent after the iovecs.
    var splicedBytes = 0
    /// A large read's range as runs of data and holes, kept to reuse its storage.
    var readRuns: [(length: UInt64, isHole: Bool)] = []

    init() {
        readRuns.reserveCapacity(Self.maxReadChunks)
    }

    deinit {
        free(buffer)
        iovecs.deallocate()
        closePipe()
    }

    /// A pipe holding at least `bytes`, or nil when none can be had (the read then goes through
    /// memory). The capacity is raised with F_SETPIPE_SZ, bounded by /proc/sys/fs/pipe-max-size.
    func pipe(holding bytes: Int) -> (read: Int32, write: Int32)? {
        if let pipe, pipeCapacity >= bytes { return pipe }
        if pipe == nil {
            var fds: [Int32] = [-1, -1]
            guard Glibc.pipe(&fds) == 0 else { return nil }
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            pipe = (fds[0], fds[1])
            pipeCapacity = Int(fcntl(fds[1], strata_f_getpipe_sz()))
        }
        if pipeCapacity < bytes {
            let granted = fcntl(pipe!.write, strata_f_setpipe_sz(), Int32(clamping: bytes))
            guard granted >= bytes else { return nil }
            pipeCapacity = Int(granted)
        }
        return pipe
    }

    /// Drops the pipe (after a failed splice it may hold bytes no reply will carry).
    func closePipe() {
        guard let pipe else { return }
        close(pipe.read)
        close(pipe.write)
        self.pipe = nil
        pipeCapacity = 0
    }

    /// The data area; valid after `reserve`.
    var data: UnsafeMutableRawPointer {
        precondition(buffer != nil, "the data area exists after reserve")
        return buffer! + Self.headerRoom
    }

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
        splicedBytes = 0
        NBDReplyEncoder.simpleReply(cookie: cookie, error: error, into: header(at: 0, count: NBDReplyEncoder.simpleReplyBytes))
        append(buffer!, NBDReplyEncoder.simpleReplyBytes)
    }

    /// A simple reply followed by `length` bytes of data already in the data area: the header goes
    /// right in front of the data so both leave in one iovec.
    func simpleReadReply(cookie: UInt64, length: Int) {
        precondition(length >= 0 && length <= dataCapacity, "a read reply carries data the data area holds")
        iovecCount = 0
        splicedBytes = 0
        let start = Self.headerRoom - NBDReplyEncoder.simpleReplyBytes
        NBDReplyEncoder.simpleReply(cookie: cookie, error: nil, into: header(at: start, count: NBDReplyEncoder.simpleReplyBytes))
        append(buffer! + start, NBDReplyEncoder.simpleReplyBytes + length)
    }

    /// One OFFSET_DATA chunk (DONE) over the whole data area, header in front of the data.
    func dataReply(cookie: UInt64, offset: UInt64, length: Int) {
        precondition(length > 0 && length <= dataCapacity, "an OFFSET_DATA chunk carries data the data area holds")
        iovecCount = 0
        splicedBytes = 0
        let start = Self.headerRoom - NBDReplyEncoder.offsetDataHeaderBytes
        NBDReplyEncoder.offsetDataHeader(cookie: cookie, offset: offset, dataLength: UInt32(length), done: true,
                                         into: header(at: start, count: NBDReplyEncoder.offsetDataHeaderBytes))
        append(buffer! + start, NBDReplyEncoder.offsetDataHeaderBytes + length)
    }

    /// A structured reply with nothing to carry (a zero-length read): one NONE chunk with DONE.
    func noneReply(cookie: UInt64) {
        iovecCount = 0
        splicedBytes = 0
        NBDReplyEncoder.none(cookie: cookie, into: header(at: 0, count: NBDReplyEncoder.noneBytes))
        append(buffer!, NBDReplyEncoder.noneBytes)
    }

    /// A reply header (simple, or OFFSET_DATA with DONE) whose `length` bytes of data wait in the
    /// worker's pipe.
    func splicedReadReply(cookie: UInt64, offset: UInt64, length: Int, structured: Bool) {
        precondition(pipe != nil && length > 0 && length <= pipeCapacity, "spliced data waits in this worker's pipe")
        iovecCount = 0
        if structured {
            NBDReplyEncoder.offsetDataHeader(cookie: cookie, offset: offset, dataLength: UInt32(length), done: true,
                                             into: header(at: 0, count: NBDReplyEncoder.offsetDataHeaderBytes))
            append(buffer!, NBDReplyEncoder.offsetDataHeaderBytes)
        } else {
            NBDReplyEncoder.simpleReply(cookie: cookie, error: nil, into: header(at: 0, count: NBDReplyEncoder.simpleReplyBytes))
            append(buffer!, NBDReplyEncoder.simpleReplyBytes)
        }
        splicedBytes = length
    }

    /// An ERROR chunk (DONE) carrying `message`, cut to a bounded length.
    func errorReply(cookie: UInt64, error: NBDErrno, message: String) {
        iovecCount = 0
        splicedBytes = 0
        var text = message
        if text.utf8.count > Self.maxErrorMessageBytes { text = String(decoding: text.utf8.prefix(Self.maxErrorMessageBytes), as: UTF8.self) }
        let room = header(at: Self.errorChunkOffset, count: Self.headerRoom - Self.errorChunkOffset)
        let count = NBDReplyEncoder.errorChunk(cookie: cookie, error: error, message: text, done: true, into: room)
        append(buffer! + Self.errorChunkOffset, count)
    }
}
