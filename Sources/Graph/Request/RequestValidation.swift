import StrataRuntime

extension BlockRequest {
    /// The end of the byte range when the request is well formed: a non-negative length, no
    /// overflow, an end a file offset can express (off_t), and for reads and writes a buffer that
    /// covers the length. Nil means the caller must answer EINVAL.
    @inlinable public var validatedEnd: UInt64? {
        guard lengthBytes >= 0, let end = endBytes, end <= UInt64(Int64.max) else { return nil }
        if operation == .read || operation == .write {
            guard buffer.count >= lengthBytes else { return nil }
        }
        return end
    }

    /// QEMU's BlockBackend check (blk_check_byte_request): a request reaching past the end of the
    /// node fails with EIO before any driver sees it. Flush has no range and always passes.
    @inlinable public func rangeStatus(sizeBytes: UInt64) -> IOStatus {
        if operation == .flush { return .ok }
        guard let end = validatedEnd else { return .invalid }
        return end <= sizeBytes ? .ok : .ioError
    }

    /// What a protocol node answers before any I/O, or nil when the request goes on: a bad or
    /// out-of-range request fails, an empty one succeeds, a write to a read-only node is refused.
    @inlinable public func leafPrologue(sizeBytes: UInt64, readOnly: Bool) -> IOStatus? {
        if operation != .flush {
            let range = rangeStatus(sizeBytes: sizeBytes)
            guard range.isOK else { return range }
            if lengthBytes == 0 { return .ok }
        }
        return readOnly && operation.isWrite ? .readOnly : nil
    }
}
