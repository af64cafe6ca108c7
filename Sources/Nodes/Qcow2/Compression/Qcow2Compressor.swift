import CZlib

/// Deflates whole clusters for compressed writes as QEMU's qcow2_zlib_compress: raw deflate with a
/// 4 KiB window (windowBits -12), default level, memLevel 9. One per instance, reset per cluster.
final class Qcow2Compressor {
    private let stream: UnsafeMutablePointer<z_stream>

    init?() {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        guard deflateInit2_(stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY,
                            zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            stream.deallocate()
            return nil
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
    }

    /// The compressed size, or nil when the data does not compress into `outputCapacity` bytes
    /// (the caller then writes the cluster uncompressed).
    func compress(input: UnsafeRawPointer, inputCount: Int, output: UnsafeMutableRawPointer, outputCapacity: Int) -> Int? {
        guard deflateReset(stream) == Z_OK else { return nil }
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(inputCount)
        stream.pointee.next_out = output.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(outputCapacity)
        let result = deflate(stream, Z_FINISH)
        let produced = outputCapacity - Int(stream.pointee.avail_out)
        stream.pointee.next_in = nil
        stream.pointee.next_out = nil
        return result == Z_STREAM_END ? produced : nil
    }
}
