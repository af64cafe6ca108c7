import CZstd

/// Decompresses qcow2's zstd-compressed clusters (compression type 1). QEMU stores one or more
/// zstd frames without recording their exact size, so the input is the sector-rounded length
/// from the L2 entry and may carry trailing bytes; as QEMU's qcow2_zstd_decompress, frames are
/// streamed until the cluster is full, every step must make progress, and a frame left
/// unfinished when the cluster is full means the data is damaged. One per instance, reset per
/// cluster.
final class Qcow2ZstdDecompressor {
    private let stream: OpaquePointer

    init?() {
        guard let stream = ZSTD_createDStream() else { return nil }
        self.stream = stream
    }

    deinit {
        ZSTD_freeDStream(stream)
    }

    /// Fills all `outputCount` bytes of `output` from the frames in `input`.
    func decompress(input: UnsafeRawPointer, inputCount: Int, output: UnsafeMutableRawPointer, outputCount: Int) -> Bool {
        guard ZSTD_isError(ZSTD_DCtx_reset(stream, ZSTD_reset_session_only)) == 0 else { return false }
        var source = ZSTD_inBuffer(src: input, size: inputCount, pos: 0)
        var target = ZSTD_outBuffer(dst: output, size: outputCount, pos: 0)
        var remaining = 0
        while target.pos < target.size {
            let (inBefore, outBefore) = (source.pos, target.pos)
            remaining = ZSTD_decompressStream(stream, &target, &source)
            if ZSTD_isError(remaining) != 0 { return false }
            // No progress: the input ended mid-frame, or the library waits for more than there is.
            if source.pos <= inBefore && target.pos <= outBefore { return false }
        }
        // A frame still wanting input or output: more data than a cluster, or a damaged frame.
        return remaining == 0
    }
}
