import StrataGraph
import StrataRuntime

/// A copy-on-read node on one queue. Reads of ranges the child's image holds itself go straight
/// to the child (routed without suspending when its cached metadata can tell); the rest is read
/// through the child and, where it comes from layers down to `bottom`, written back into the
/// child's image in whole allocation units with `writeUnchanged`, as QEMU's
/// bdrv_co_do_copy_on_readv does. Writes, write-zeroes and discard hold their range shared
/// against copies; flushes pass through.
actor CopyOnReadInstance: BlockNode {
    /// The most one copy holds locked and buffered at once (rounded up to allocation units).
    static let maxCopyBytes = 1 << 20

    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let child: NodeHandle
    /// Nil when the child is no layer of a chain: then there is nothing to copy.
    private nonisolated let layer: (any BackingChainLayer)?
    /// The layers whose data is copied (`bottom` given); nil copies whatever the child lacks.
    private let intermediates: [any NodeState]?
    private let locks: RangeLock

    init(queue: QueueContext, child: NodeHandle, layer: (any BackingChainLayer)?, intermediates: [any NodeState]?,
         locks: RangeLock) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.layer = layer
        self.intermediates = intermediates
        self.locks = locks
    }

    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        guard let layer, request.lengthBytes > 0 else { return .forward(to: NodeReference(child)) }
        switch request.operation {
        case .flush:
            return .forward(to: NodeReference(child))
        case .read:
            let allocated = layer.cachedAllocation(offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes)
            return allocated == true ? .forward(to: NodeReference(child)) : .suspend
        case .spliceRead:
            // Data copied up must pass through memory to be written to the top layer.
            return .complete(.notSupported)
        case .write, .writeZeroes, .discard:
            return .suspend
        }
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        guard let layer, request.lengthBytes > 0, let end = request.endBytes else { return await child.submit(request) }
        switch request.operation {
        case .flush:
            return await child.submit(request)
        case .read:
            if layer.cachedAllocation(offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes) == true {
                return await child.submit(request)
            }
            return await copyOnRead(request, layer: layer)
        case .spliceRead:
            return .notSupported
        case .write, .writeZeroes, .discard:
            let hold = await locks.acquire(request.offsetBytes..<end, exclusive: false)
            let status = await child.submit(request)
            locks.release(hold)
            return status
        }
    }

    // MARK: Copy on read

    /// Serves a read extent by extent of the child's block status: allocated extents are read,
    /// the others copied (or only read, when `bottom` excludes the layers that hold them).
    private nonisolated(nonsending) func copyOnRead(_ request: BlockRequest, layer: any BackingChainLayer) async -> IOStatus {
        guard let base = request.buffer.base else { return .invalid }
        let start = request.offsetBytes
        let end = start + UInt64(request.lengthBytes)
        var offset = start
        while offset < end {
            let extent: BlockStatusExtent
            do {
                extent = try await layer.blockStatus(offsetBytes: offset, maxLengthBytes: end - offset)
            } catch {
                return .ioError
            }
            guard extent.lengthBytes > 0 else { return .ioError }
            var length = extent.lengthBytes
            var mustCopy = !extent.isAllocated
            if mustCopy, let intermediates {
                let above = await allocatedAbove(intermediates, offset: offset, length: length)
                mustCopy = above.allocated
                length = above.length
            }
            let target = base + Int(offset - start)
            let status = mustCopy ? await copy(offset: offset, length: Int(length), into: target, layer: layer)
                                  : await read(into: target, offset: offset, length: Int(length))
            guard status.isOK else { return status }
            offset += length
        }
        return .ok
    }

    /// QEMU's bdrv_is_allocated_above over `layers` (top first): whether one of them holds the
    /// start of the range, and how far that answer holds. A failed query copies anyway, as QEMU.
    private nonisolated(nonsending) func allocatedAbove(_ layers: [any NodeState], offset: UInt64,
                                                        length: UInt64) async -> (allocated: Bool, length: UInt64) {
        var length = length
        for state in layers where offset < state.sizeBytes {
            do {
                let extent = try await state.blockStatusOrData(offsetBytes: offset, maxLengthBytes: length)
                if extent.isAllocated { return (true, max(1, extent.lengthBytes)) }
                if extent.lengthBytes > 0 { length = min(length, extent.lengthBytes) }
            } catch {
                return (true, length)
            }
        }
        return (false, length)
    }

    private nonisolated(nonsending) func read(into base: UnsafeMutableRawPointer, offset: UInt64, length: Int) async -> IOStatus {
        await child.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length, buffer: IOBuffer(base: base, count: length)))
    }

    /// Copies the allocation units covering `[offset, offset + length)` into the child's image a
    /// chunk at a time, each under an exclusive hold of its range, and hands the requested bytes
    /// to the caller. Units a write allocated meanwhile are read, not overwritten.
    private nonisolated(nonsending) func copy(offset: UInt64, length: Int, into target: UnsafeMutableRawPointer,
                                              layer: any BackingChainLayer) async -> IOStatus {
        let unit = UInt64(max(1, layer.allocationUnitBytes))
        let size = layer.sizeBytes
        let end = offset + UInt64(length)
        let alignedStart = offset / unit * unit
        let alignedEnd = min((end + unit - 1) / unit * unit, size)
        let chunkMax = max(unit, (UInt64(Self.maxCopyBytes) + unit - 1) / unit * unit)
        let bufferBytes = Int(min(chunkMax, alignedEnd - alignedStart))
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferBytes, alignment: 4096)
        defer { buffer.deallocate() }
        var cursor = alignedStart
        while cursor < alignedEnd {
            let chunkEnd = min(cursor + chunkMax, alignedEnd)
            let hold = await locks.acquire(cursor..<chunkEnd, exclusive: true)
            let status = await copyChunk(cursor..<chunkEnd, buffer: buffer, layer: layer)
            locks.release(hold)
            guard status.isOK else { return status }
            let from = max(cursor, offset)
            let to = min(chunkEnd, end)
            if to > from {
                (target + Int(from - offset)).copyMemory(from: buffer + Int(from - cursor), byteCount: Int(to - from))
            }
            cursor = chunkEnd
        }
        return .ok
    }

    /// Reads the chunk through the child, then writes back the parts the child's image still
    /// lacks (checked again under the hold): all-zero parts as write-zeroes, as QEMU does.
    private nonisolated(nonsending) func copyChunk(_ range: Range<UInt64>, buffer: UnsafeMutableRawPointer,
                                                   layer: any BackingChainLayer) async -> IOStatus {
        let status = await read(into: buffer, offset: range.lowerBound, length: Int(range.count))
        guard status.isOK else { return status }
        var cursor = range.lowerBound
        while cursor < range.upperBound {
            let extent: BlockStatusExtent
            do {
                extent = try await layer.blockStatus(offsetBytes: cursor, maxLengthBytes: range.upperBound - cursor)
            } catch {
                return .ioError
            }
            guard extent.lengthBytes > 0 else { return .ioError }
            if !extent.isAllocated {
                let part = buffer + Int(cursor - range.lowerBound)
                let length = Int(extent.lengthBytes)
                let isZero = UnsafeRawBufferPointer(start: part, count: length).allSatisfy { $0 == 0 }
                let write = isZero
                    ? BlockRequest(operation: .writeZeroes, offsetBytes: cursor, lengthBytes: length, flags: .writeUnchanged)
                    : BlockRequest(operation: .write, offsetBytes: cursor, lengthBytes: length,
                                   buffer: IOBuffer(base: part, count: length), flags: .writeUnchanged)
                let written = await child.submit(write)
                guard written.isOK else { return written }
            }
            cursor += extent.lengthBytes
        }
        return .ok
    }
}
