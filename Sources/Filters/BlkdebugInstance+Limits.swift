import StrataGraph
import StrataRuntime

// Meeting `BlkdebugLimits` on the way to the child, as QEMU's generic block layer does for a
// node's limits: reads and writes padded to `align` (a write's partial blocks read, merged and
// written whole, holding its range exclusively so no overlapping request runs meanwhile), cut
// at `max-transfer`; write-zeroes cut at `opt-write-zero` boundaries and `max-write-zero`;
// discards shrunk to whole `opt-discard` blocks (they are advisory) and cut at `max-discard`.
// Every piece is judged by the rules on its own, as each request QEMU's blkdebug receives is.
extension BlkdebugInstance {
    nonisolated(nonsending) func submitWithinLimits(_ request: BlockRequest, _ limits: BlkdebugLimits) async -> IOStatus {
        guard request.operation != .flush else { return await forward(request) }
        guard request.lengthBytes >= 0, let end = request.endBytes else { return .invalid }
        let range = request.offsetBytes..<end
        switch request.operation {
        case .read:
            return await paddedRead(request, range, limits)
        case .write:
            return await paddedWrite(request, range, limits)
        case .writeZeroes:
            // Partial blocks at either end are written as zeros, merged like any write.
            let block = UInt64(limits.requestAlignment)
            let start = (range.lowerBound + block - 1) / block * block
            let stop = range.upperBound / block * block
            var partials: [Range<UInt64>] = []
            var middle: Range<UInt64>?
            if start >= stop {
                partials = [range]
            } else {
                if range.lowerBound < start { partials.append(range.lowerBound..<start) }
                if stop < range.upperBound { partials.append(stop..<range.upperBound) }
                middle = start..<stop
            }
            for part in partials {
                let zeros = PageBuffer(count: Int(part.count))
                defer { zeros.release() }
                zeros.buffer.zero()
                var write = request.narrowed(to: part)
                write.operation = .write
                write.flags = request.flags.intersection(.fua)
                write.buffer = zeros.buffer
                let status = await paddedWrite(write, part, limits)
                guard status.isOK else { return status }
            }
            guard let middle else { return .ok }
            for piece in BlkdebugLimits.pieces(of: middle, boundary: limits.optWriteZero, maxLength: limits.maxWriteZero) {
                let status = await forward(request.narrowed(to: piece))
                guard status.isOK else { return status }
            }
            return .ok
        case .discard:
            let block = UInt64(max(limits.requestAlignment, limits.optDiscard))
            let start = (range.lowerBound + block - 1) / block * block
            let stop = range.upperBound / block * block
            guard start < stop else { return .ok }
            for piece in BlkdebugLimits.pieces(of: start..<stop, boundary: 0, maxLength: limits.maxDiscard) {
                let status = await forward(request.narrowed(to: piece))
                guard status.isOK else { return status }
            }
            return .ok
        case .flush:
            return await forward(request)
        case .spliceRead:
            return .notSupported  // the caller reads instead
        }
    }

    /// One piece to the child, judged by the rules first.
    private nonisolated(nonsending) func forward(_ request: BlockRequest) async -> IOStatus {
        if let status = state.verdict(for: request) { return status }
        return await child.submit(request)
    }

    private nonisolated(nonsending) func paddedRead(_ request: BlockRequest, _ range: Range<UInt64>, _ limits: BlkdebugLimits) async -> IOStatus {
        let aligned = Self.aligned(range, limits.requestAlignment)
        let hold = await state.locks.acquire(aligned, exclusive: false)
        defer { state.locks.release(hold) }
        if aligned == range {
            return await transfer(.read, range, buffer: request.buffer, template: request, limits)
        }
        let bounce = PageBuffer(count: Int(aligned.count))
        defer { bounce.release() }
        let status = await readWithinChild(aligned, into: bounce.buffer, template: request, limits)
        guard status.isOK else { return status }
        request.buffer.base!.copyMemory(from: bounce.base + Int(range.lowerBound - aligned.lowerBound), byteCount: request.lengthBytes)
        return .ok
    }

    private nonisolated(nonsending) func paddedWrite(_ request: BlockRequest, _ range: Range<UInt64>, _ limits: BlkdebugLimits) async -> IOStatus {
        let aligned = Self.aligned(range, limits.requestAlignment)
        if aligned == range {
            let hold = await state.locks.acquire(aligned, exclusive: false)
            defer { state.locks.release(hold) }
            return await transfer(.write, range, buffer: request.buffer, template: request, limits)
        }
        // Read-modify-write of the partial blocks at either end.
        let hold = await state.locks.acquire(aligned, exclusive: true)
        defer { state.locks.release(hold) }
        let block = UInt64(limits.requestAlignment)
        let bounce = PageBuffer(count: Int(aligned.count))
        defer { bounce.release() }
        let readTemplate = BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 0)
        let readsHead = range.lowerBound != aligned.lowerBound
        if readsHead {
            let head = aligned.lowerBound..<aligned.lowerBound + block
            let status = await readWithinChild(head, into: bounce.buffer.slice(from: 0, count: Int(block)), template: readTemplate, limits)
            guard status.isOK else { return status }
        }
        // A one-block request whose head was read has its tail already.
        if range.upperBound != aligned.upperBound && !(readsHead && aligned.count == block) {
            let tail = aligned.upperBound - block..<aligned.upperBound
            let status = await readWithinChild(tail, into: bounce.buffer.slice(from: Int(tail.lowerBound - aligned.lowerBound), count: Int(block)),
                                               template: readTemplate, limits)
            guard status.isOK else { return status }
        }
        (bounce.base + Int(range.lowerBound - aligned.lowerBound)).copyMemory(from: request.buffer.base!, byteCount: request.lengthBytes)
        return await transfer(.write, aligned, buffer: bounce.buffer, template: request, limits)
    }

    /// Reads `range` (aligned) into `buffer`; the part past the child's end reads as zeros, as a
    /// file's does, since the padding of a request at the end may reach past it.
    private nonisolated(nonsending) func readWithinChild(_ range: Range<UInt64>, into buffer: IOBuffer, template: BlockRequest,
                                                         _ limits: BlkdebugLimits) async -> IOStatus {
        let childEnd = state.sizeBytes
        let readable = range.lowerBound..<max(range.lowerBound, min(range.upperBound, childEnd))
        if readable.count < range.count {
            buffer.slice(from: Int(readable.count), count: Int(range.count - readable.count)).zero()
        }
        guard !readable.isEmpty else { return .ok }
        return await transfer(.read, readable, buffer: buffer.slice(from: 0, count: Int(readable.count)), template: template, limits)
    }

    /// `range` to or from `buffer` in pieces of at most `max-transfer`.
    private nonisolated(nonsending) func transfer(_ operation: BlockOperation, _ range: Range<UInt64>, buffer: IOBuffer,
                                                  template: BlockRequest, _ limits: BlkdebugLimits) async -> IOStatus {
        for piece in BlkdebugLimits.pieces(of: range, boundary: 0, maxLength: limits.maxTransfer) {
            var part = template.narrowed(to: piece)
            part.operation = operation
            part.buffer = buffer.slice(from: Int(piece.lowerBound - range.lowerBound), count: Int(piece.count))
            let status = await forward(part)
            guard status.isOK else { return status }
        }
        return .ok
    }

    private static func aligned(_ range: Range<UInt64>, _ alignment: Int) -> Range<UInt64> {
        let block = UInt64(alignment)
        return range.lowerBound / block * block..<(range.upperBound + block - 1) / block * block
    }
}

extension BlockRequest {
    /// The same request over `range` only (buffer untouched: callers slice it).
    fileprivate func narrowed(to range: Range<UInt64>) -> BlockRequest {
        var request = self
        request.offsetBytes = range.lowerBound
        request.lengthBytes = Int(range.count)
        return request
    }
}

/// Page-aligned bounce memory for one padded request.
private struct PageBuffer {
    let base: UnsafeMutableRawPointer
    let count: Int

    init(count: Int) {
        self.count = count
        base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 4096)
    }

    var buffer: IOBuffer { IOBuffer(base: base, count: count) }
    func release() { base.deallocate() }
}
