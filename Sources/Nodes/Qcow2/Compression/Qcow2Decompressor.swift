import CZlib

/// Inflates qcow2's zlib-compressed clusters: raw deflate with a 4 KiB window (windowBits -12),
/// as QEMU's qcow2_zlib_decompress. One per instance, set up once and reset per cluster, so a
/// compressed read allocates nothing after the first.
final class Qcow2Decompressor {
    private let stream: UnsafeMutablePointer<z_stream>

    init?() {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        guard inflateInit2_(stream, -12, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            stream.deallocate()
            return nil
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
    }

    /// Fills all `outputCount` bytes of `output` from the deflate data in `input`. The input is
    /// the compressed size rounded to sectors, so it may end mid-stream or carry trailing bytes:
    /// as in QEMU, success means the output is full.
    func inflate(input: UnsafeMutableRawPointer, inputCount: Int, output: UnsafeMutableRawPointer, outputCount: Int) -> Bool {
        guard inflateReset(stream) == Z_OK else { return false }
        stream.pointee.next_in = input.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_in = uInt(inputCount)
        stream.pointee.next_out = output.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(outputCount)
        let result = CZlib.inflate(stream, Z_FINISH)
        let full = stream.pointee.avail_out == 0
        stream.pointee.next_in = nil
        stream.pointee.next_out = nil
        return (result == Z_STREAM_END || result == Z_BUF_ERROR) && full
    }
}
