import CZstd

/// Compresses one qcow2 cluster as a zstd frame (compression type 1), as QEMU's
/// qcow2_zstd_compress: one streaming call that must finish the frame within the output, at
/// zstd's default level. Made for the compressed-write path, one per instance (the context is
/// reused, so a compression allocates nothing after the first).
final class Qcow2ZstdCompressor {
    private let context: OpaquePointer

    init?() {
        guard let context = ZSTD_createCCtx() else { return nil }
        self.context = context
    }

    deinit {
        ZSTD_freeCCtx(context)
    }

    /// The frame's size in `output`, or nil when it does not fit in `outputCapacity` bytes (the
    /// caller then writes the cluster uncompressed) or zstd fails.
    func compress(input: UnsafeRawPointer, inputCount: Int, output: UnsafeMutableRawPointer, outputCapacity: Int) -> Int? {
        guard ZSTD_isError(ZSTD_CCtx_reset(context, ZSTD_reset_session_only)) == 0 else { return nil }
        var source = ZSTD_inBuffer(src: input, size: inputCount, pos: 0)
        var target = ZSTD_outBuffer(dst: output, size: outputCapacity, pos: 0)
        // Anything but 0 is an error or a frame that needs more room than there is.
        let left = ZSTD_compressStream2(context, &target, &source, ZSTD_e_end)
        guard left == 0 else { return nil }
        return target.pos
    }
}
