import Glibc
import StrataGraph
import StrataRuntime

/// qemu-img compare: guest-visible contents of two images, skipping ranges block status shows
/// zero in both, reading the rest in 2 MiB chunks; a larger image must hold only zeros past the
/// smaller one's end. Exit codes as qemu-img's: 0 identical, 1 different, 2 other error (open),
/// 3 block status failed, 4 a read failed.
public enum ImageCompare {
    public static let chunkBytes: UInt64 = 2 << 20
    static let sectorBytes = 512

    public struct Outcome: Sendable {
        public let exitCode: Int32
        /// What qemu-img prints on standard output (suppressed by -q).
        public let messages: [String]
        /// What it prints on standard error.
        public let error: String?
    }

    struct Failure: Error {
        let exitCode: Int32
        let message: String
    }

    /// Compares two open images; `strict` (-s) also fails on differing block status.
    public static func compare(_ first: ImageSession, _ second: ImageSession, strict: Bool) async -> Outcome {
        var messages: [String] = []
        do throws(Failure) {
            let size1 = first.sizeBytes
            let size2 = second.sizeBytes
            let common = min(size1, size2)
            let buffer1 = AlignedBuffer(count: Int(chunkBytes))
            let buffer2 = AlignedBuffer(count: Int(chunkBytes))
            var offset: UInt64 = 0
            while offset < common {
                let status1 = try await status(first, offset, common - offset)
                let status2 = try await status(second, offset, common - offset)
                var chunk = min(status1.lengthBytes, status2.lengthBytes)
                // QEMU compares the whole status word, the offset-valid flag included (compressed
                // clusters have no place in the file to report).
                if strict && (status1.isData, status1.isZero, status1.isAllocated, status1.hostOffset != nil)
                    != (status2.isData, status2.isZero, status2.isAllocated, status2.hostOffset != nil) {
                    messages.append("Strict mode: Offset \(offset) block status mismatch!")
                    return Outcome(exitCode: 1, messages: messages, error: nil)
                }
                if status1.isZero && status2.isZero {
                    // Both read as zeros: nothing to read.
                } else if status1.isAllocated == status2.isAllocated {
                    chunk = min(chunk, chunkBytes)
                    try await read(first, offset, chunk, into: buffer1)
                    try await read(second, offset, chunk, into: buffer2)
                    if let mismatch = firstDifferingSector(buffer1, buffer2, count: Int(chunk)) {
                        messages.append("Content mismatch at offset \(offset + UInt64(mismatch))!")
                        return Outcome(exitCode: 1, messages: messages, error: nil)
                    }
                } else {
                    chunk = min(chunk, chunkBytes)
                    let (image, buffer) = status1.isAllocated ? (first, buffer1) : (second, buffer2)
                    if let nonZero = try await firstNonZero(image, offset, chunk, buffer) {
                        messages.append("Content mismatch at offset \(nonZero)!")
                        return Outcome(exitCode: 1, messages: messages, error: nil)
                    }
                }
                offset += chunk
            }
            if size1 != size2 {
                messages.append("Warning: Image size mismatch!")
                let larger = size1 > size2 ? first : second
                let end = max(size1, size2)
                var position = common
                while position < end {
                    let extent = try await status(larger, position, end - position)
                    let chunk = min(extent.lengthBytes, chunkBytes)
                    if extent.isAllocated && !extent.isZero, let nonZero = try await firstNonZero(larger, position, chunk, buffer1) {
                        messages.append("Content mismatch at offset \(nonZero)!")
                        return Outcome(exitCode: 1, messages: messages, error: nil)
                    }
                    position += chunk
                }
            }
            messages.append("Images are identical.")
            return Outcome(exitCode: 0, messages: messages, error: nil)
        } catch {
            return Outcome(exitCode: error.exitCode, messages: messages, error: error.message)
        }
    }

    private static func status(_ image: ImageSession, _ offset: UInt64, _ length: UInt64) async throws(Failure) -> BlockStatusExtent {
        do {
            let extent = try await image.blockStatus(offsetBytes: offset, maxLengthBytes: length)
            guard extent.lengthBytes > 0 else { throw Failure(exitCode: 3, message: "Unexpected end of '\(image.path)' at offset \(offset)") }
            return extent
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(exitCode: 3, message: "Sector allocation test failed for \(image.path): \(error)")
        }
    }

    private static func read(_ image: ImageSession, _ offset: UInt64, _ length: UInt64, into buffer: AlignedBuffer) async throws(Failure) {
        let status = await image.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: Int(length), buffer: buffer.slice(from: 0, count: Int(length))))
        guard status.isOK else {
            throw Failure(exitCode: 4, message: "Error while reading offset \(offset) of \(image.path): \(String(cString: strerror(status.errno)))")
        }
    }

    private static func firstNonZero(_ image: ImageSession, _ offset: UInt64, _ length: UInt64, _ buffer: AlignedBuffer) async throws(Failure) -> UInt64? {
        try await read(image, offset, length, into: buffer)
        let bytes = UnsafeRawBufferPointer(buffer.bytes)
        return (0..<Int(length)).first { bytes[$0] != 0 }.map { offset + UInt64($0) }
    }

    /// qemu-img's compare_buffers: the start of the first 512-byte sector that differs.
    private static func firstDifferingSector(_ a: AlignedBuffer, _ b: AlignedBuffer, count: Int) -> Int? {
        var start = 0
        while start < count {
            let length = min(sectorBytes, count - start)
            if memcmp(a.base + start, b.base + start, length) != 0 { return start }
            start += length
        }
        return nil
    }
}
