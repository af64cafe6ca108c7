import StrataGraph
import StrataRuntime
import Synchronization

/// qemu-img convert's copy loop over two image sessions: the source is walked by block status
/// (through its backing chain) in chunks of at most 2 MiB; ranges that read as zeros are skipped
/// when the target already reads as zeros, else written as write-zeroes; data is scanned in
/// `sparseBytes` blocks, and all-zero blocks are treated as zero ranges (-S; 0 writes everything).
/// `workers` tasks copy chunks concurrently (-m); without `outOfOrder` (-W) they write in order.
public struct ImageConvert: Sendable {
    public static let chunkBytes: UInt64 = 2 << 20

    public var sparseBytes: UInt64 = 4096
    public var workers = 8
    public var outOfOrder = false
    /// The target reads as zeros before the copy (a fresh image, or --target-is-zero).
    public var targetIsZero = false
    /// Write data clusters compressed (-c): the target's cluster size; nil writes plainly.
    public var compressClusterBytes: Int?
    /// Called with the fraction done after every chunk (-p).
    public var progress: (@Sendable (Double) -> Void)?

    public init() {}

    /// A counter the workers share: which chunk comes next, how many are done.
    private final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    public func run(source: ImageSession, target: ImageSession) async throws {
        let size = source.sizeBytes
        guard target.sizeBytes >= size else {
            throw Failure(description: "Target image is smaller than the source (\(target.sizeBytes) < \(size) bytes)")
        }
        // Chunks come from block status, so their boundaries follow the source's allocation.
        var chunks: [(offset: UInt64, length: UInt64, zero: Bool)] = []
        var offset: UInt64 = 0
        while offset < size {
            let extent = try await source.blockStatus(offsetBytes: offset, maxLengthBytes: min(Self.chunkBytes, size - offset))
            guard extent.lengthBytes > 0 else { throw Failure(description: "Unexpected end of the source at offset \(offset)") }
            chunks.append((offset, extent.lengthBytes, extent.isZero && !extent.isData))
            offset += extent.lengthBytes
        }
        let next = Counter()
        let order = ConvertWriteOrder()
        let done = Counter()
        let chunkList = chunks
        let settings = self
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<max(1, workers) {
                // Workers spread over the sessions' queues, so copies run on every queue's thread.
                let sourceQueue = worker % source.queueCount
                let targetQueue = worker % target.queueCount
                group.addTask {
                    let buffer = AlignedBuffer(count: Int(Self.chunkBytes))
                    while true {
                        let index = next.value.wrappingAdd(1, ordering: .relaxed).oldValue
                        guard index < chunkList.count else { return }
                        let chunk = chunkList[index]
                        var data = false
                        if !chunk.zero || settings.sparseBytes == 0 {
                            try await settings.read(source, chunk.offset, chunk.length, buffer, queue: sourceQueue)
                            data = true
                        }
                        if !settings.outOfOrder { await order.waitForTurn(index) }
                        do {
                            try await settings.write(target, chunk.offset, chunk.length, data ? buffer : nil, queue: targetQueue)
                        } catch {
                            if !settings.outOfOrder { order.finished(index) }
                            throw error
                        }
                        if !settings.outOfOrder { order.finished(index) }
                        let count = done.value.wrappingAdd(1, ordering: .relaxed).newValue
                        settings.progress?(Double(count) / Double(chunkList.count))
                    }
                }
            }
            try await group.waitForAll()
        }
        if chunkList.isEmpty { progress?(1) }
        let flushed = await target.flush()
        guard flushed.isOK else { throw Failure(description: "Could not flush the target: \(flushed)") }
    }

    private func read(_ source: ImageSession, _ offset: UInt64, _ length: UInt64, _ buffer: AlignedBuffer, queue: Int) async throws {
        let status = await source.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: Int(length), buffer: buffer.slice(from: 0, count: Int(length))), queue: queue)
        guard status.isOK else { throw Failure(description: "error while reading at byte \(offset): \(status)") }
    }

    /// Writes one chunk: `buffer` holds its data, nil for a zero range.
    private func write(_ target: ImageSession, _ offset: UInt64, _ length: UInt64, _ buffer: AlignedBuffer?, queue: Int) async throws {
        guard let buffer else {
            if !targetIsZero { try await submit(target, queue: queue, BlockRequest(operation: .writeZeroes, offsetBytes: offset, lengthBytes: Int(length), flags: .mayUnmap)) }
            return
        }
        if let cluster = compressClusterBytes {
            try await writeCompressed(target, offset, length, buffer, cluster: cluster, queue: queue)
            return
        }
        guard sparseBytes > 0 else {
            try await submit(target, queue: queue, BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: Int(length), buffer: buffer.slice(from: 0, count: Int(length))))
            return
        }
        // Runs of equal kind (all-zero block or not) become one request each.
        let bytes = UnsafeRawBufferPointer(buffer.bytes)
        let block = Int(sparseBytes)
        var start = 0
        while start < Int(length) {
            let zero = Self.isZero(bytes, start, min(block, Int(length) - start))
            var end = min(start + block, Int(length))
            while end < Int(length), Self.isZero(bytes, end, min(block, Int(length) - end)) == zero { end = min(end + block, Int(length)) }
            if !zero {
                try await submit(target, queue: queue, BlockRequest(operation: .write, offsetBytes: offset + UInt64(start), lengthBytes: end - start, buffer: buffer.slice(from: start, count: end - start)))
            } else if !targetIsZero {
                try await submit(target, queue: queue, BlockRequest(operation: .writeZeroes, offsetBytes: offset + UInt64(start), lengthBytes: end - start, flags: .mayUnmap))
            }
            start = end
        }
    }

    /// One compressed write per cluster (chunks start on cluster boundaries: block status works
    /// in clusters, and chunks are 2 MiB); all-zero clusters stay unwritten on a zero target.
    private func writeCompressed(_ target: ImageSession, _ offset: UInt64, _ length: UInt64, _ buffer: AlignedBuffer, cluster: Int, queue: Int) async throws {
        let bytes = UnsafeRawBufferPointer(buffer.bytes)
        var start = 0
        while start < Int(length) {
            let count = min(cluster - Int((offset + UInt64(start)) % UInt64(cluster)), Int(length) - start)
            if Self.isZero(bytes, start, count) {
                if !targetIsZero { try await submit(target, queue: queue, BlockRequest(operation: .writeZeroes, offsetBytes: offset + UInt64(start), lengthBytes: count)) }
            } else {
                let aligned = (offset + UInt64(start)) % UInt64(cluster) == 0
                let whole = count == cluster || offset + UInt64(start + count) == target.sizeBytes
                let flags: RequestFlags = aligned && whole ? .compressed : []
                try await submit(target, queue: queue, BlockRequest(operation: .write, offsetBytes: offset + UInt64(start), lengthBytes: count,
                                                      buffer: buffer.slice(from: start, count: count), flags: flags))
            }
            start += count
        }
    }

    private func submit(_ target: ImageSession, queue: Int, _ request: BlockRequest) async throws {
        let status = await target.submit(request, queue: queue)
        guard status.isOK else { throw Failure(description: "error while writing at byte \(request.offsetBytes): \(status)") }
    }

    /// Whether `count` bytes from `start` are all zero: eight bytes at a time, since convert
    /// scans every byte it copies.
    private static func isZero(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ count: Int) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let pointer = base + start
        var index = 0
        while index + 8 <= count {
            if pointer.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
            index += 8
        }
        while index < count {
            if pointer.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
            index += 1
        }
        return true
    }

}
