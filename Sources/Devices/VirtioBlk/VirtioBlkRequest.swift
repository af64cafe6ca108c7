import StrataGraph

/// A virtio-blk request decoded from a device-side descriptor chain, ready to become a
/// `BlockRequest` (virtio 1.2 §5.2.6).
///
/// Framing: the first descriptor is the header (device-readable, at least 16 bytes), the last one
/// ends in the status byte (device-writable, at least 1 byte; the status is its last byte), and
/// the descriptors between them are data. A chain without that framing cannot even be answered
/// and is a `ParseError`. Everything else a driver can get wrong is answered through the status
/// byte: `action` is then `.complete(status)` and no I/O may be issued.
///
/// Everything the device acts on is read from guest memory exactly once, here: header fields,
/// discard/write-zeroes ranges, data buffer addresses. A guest rewriting descriptors or header
/// while the request runs cannot move it past the capacity check.
///
/// Data buffers are written into caller-provided `segmentStorage` (validated, adjacent buffers
/// merged), which must stay untouched until the request completes: a device keeps one such array
/// per request slot, sized to the seg_max it advertises. Nothing is allocated per request.
public struct VirtioBlkRequest {
    public enum Action: Equatable, Sendable {
        /// Issue this operation over `offsetBytes`, `lengthBytes` (and `segments` for read/write).
        case io(BlockOperation)
        /// Answer VIRTIO_BLK_T_GET_ID with `completeGetID`.
        case getID
        /// Issue nothing: complete at once with this status.
        case complete(VirtioBlkStatus)
    }

    /// A chain that is not a virtio-blk request at all; there may be no status byte to answer with.
    /// The device returns the chain with used length 0 or treats the device as broken (QEMU's
    /// choice); it must not issue I/O.
    public enum ParseError: Error, Equatable, Sendable {
        /// The walk over the chain itself failed.
        case chain(VirtqueueError)
        /// Fewer than two descriptors: no room for both header and status.
        case chainTooShort
        case headerNotDeviceReadable
        case headerTooShort
        case statusNotDeviceWritable
        case statusTooShort
    }

    public let head: UInt16
    public let type: VirtioBlkRequestType
    /// The header's sector field as sent.
    public let sector: UInt64
    public let action: Action
    /// Byte range on the device: from the header for read/write, from the range for
    /// discard/write-zeroes, 0 otherwise.
    public let offsetBytes: UInt64
    /// Bytes of data for read/write/get-id, bytes of the range for discard/write-zeroes.
    public let lengthBytes: Int
    /// `.mayUnmap` for write-zeroes whose range had the unmap bit.
    public let flags: RequestFlags
    /// The data buffers, in order: for read/write/get-id only, empty otherwise.
    public let segments: UnsafeBufferPointer<IOBuffer>
    /// The status byte in guest memory; `complete` writes it.
    public let status: UnsafeMutableRawPointer

    @inlinable
    init(head: UInt16, type: VirtioBlkRequestType, sector: UInt64, action: Action, offsetBytes: UInt64 = 0,
         lengthBytes: Int = 0, flags: RequestFlags = [],
         segments: UnsafeBufferPointer<IOBuffer> = .init(start: nil, count: 0),
         status: UnsafeMutableRawPointer) {
        self.head = head
        self.type = type
        self.sector = sector
        self.action = action
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
        self.flags = flags
        self.segments = segments
        self.status = status
    }

    /// Decodes the chain. `capacitySectors` is the device size in 512-byte sectors: requests that
    /// reach past it get IOERR (the device must not access beyond capacity).
    @inlinable
    public static func parse(_ chain: DescriptorChain, capacitySectors: UInt64,
                             segmentStorage: UnsafeMutableBufferPointer<IOBuffer>) throws(ParseError) -> VirtioBlkRequest {
        var chain = chain
        guard let header = try step(&chain) else { throw .chainTooShort }
        guard !header.isDeviceWritable else { throw .headerNotDeviceReadable }
        guard header.buffer.count >= VirtioBlk.headerSize, let headerBytes = header.buffer.base else {
            throw .headerTooShort
        }
        let type = VirtioBlkRequestType(rawValue: UInt32(littleEndian: headerBytes.loadUnaligned(as: UInt32.self)))
        let sector = UInt64(littleEndian: headerBytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        guard var last = try step(&chain) else { throw .chainTooShort }

        // Which descriptor is the status is known only when the walk ends: each one is data once
        // another follows it.
        let dataIsDeviceWritable = type.dataIsDeviceWritable
        var stored = 0
        var dataBytes: UInt64 = 0  // the chain walk keeps the total below 2^32
        var wrongDirection = false
        var tooManySegments = false
        while let following = try step(&chain) {
            let data = last
            last = following
            guard let dataIsDeviceWritable, data.buffer.count > 0, let base = data.buffer.base else { continue }
            if data.isDeviceWritable != dataIsDeviceWritable { wrongDirection = true }
            dataBytes &+= UInt64(data.buffer.count)
            if stored > 0, let previous = segmentStorage[stored - 1].base,
               previous + segmentStorage[stored - 1].count == base {
                // Adjacent in host memory: one buffer, so more requests take the zero-copy path.
                segmentStorage[stored - 1] = IOBuffer(base: previous,
                                                      count: segmentStorage[stored - 1].count + data.buffer.count)
            } else if stored < segmentStorage.count {
                segmentStorage[stored] = data.buffer
                stored += 1
            } else {
                tooManySegments = true
            }
        }
        guard last.isDeviceWritable else { throw .statusNotDeviceWritable }
        guard last.buffer.count >= 1, let statusBase = last.buffer.base else { throw .statusTooShort }
        let status = statusBase + (last.buffer.count - 1)

        let head = chain.head
        if wrongDirection || tooManySegments {
            return VirtioBlkRequest(head: head, type: type, sector: sector, action: .complete(.ioError), status: status)
        }
        // Switching on raw values keeps this free of calls to the synthesized `==` when inlined.
        switch type.rawValue {
        case VirtioBlkRequestType.read.rawValue, VirtioBlkRequestType.write.rawValue:
            let sectors = dataBytes / UInt64(VirtioBlk.sectorSize)
            guard dataBytes % UInt64(VirtioBlk.sectorSize) == 0,
                  case (let offset, false) = sector.multipliedReportingOverflow(by: UInt64(VirtioBlk.sectorSize)),
                  fits(sector: sector, count: sectors, capacity: capacitySectors)
            else {
                return VirtioBlkRequest(head: head, type: type, sector: sector, action: .complete(.ioError), status: status)
            }
            let operation: BlockOperation = type.rawValue == VirtioBlkRequestType.read.rawValue ? .read : .write
            return VirtioBlkRequest(head: head, type: type, sector: sector, action: .io(operation),
                                    offsetBytes: offset, lengthBytes: Int(dataBytes),
                                    segments: UnsafeBufferPointer(start: segmentStorage.baseAddress, count: stored),
                                    status: status)

        case VirtioBlkRequestType.flush.rawValue:
            return VirtioBlkRequest(head: head, type: type, sector: sector, action: .io(.flush), status: status)

        case VirtioBlkRequestType.getID.rawValue:
            return VirtioBlkRequest(head: head, type: type, sector: sector, action: .getID, lengthBytes: Int(dataBytes),
                                    segments: UnsafeBufferPointer(start: segmentStorage.baseAddress, count: stored),
                                    status: status)

        case VirtioBlkRequestType.discard.rawValue, VirtioBlkRequestType.writeZeroes.rawValue:
            // One range per request, as QEMU does: the device advertises max_discard_seg and
            // max_write_zeroes_seg of 1, so more ranges are a request it does not support.
            guard dataBytes == UInt64(VirtioBlk.rangeSize) else {
                let moreRanges = dataBytes > UInt64(VirtioBlk.rangeSize) && dataBytes % UInt64(VirtioBlk.rangeSize) == 0
                return VirtioBlkRequest(head: head, type: type, sector: sector,
                                        action: .complete(moreRanges ? .unsupported : .ioError), status: status)
            }
            var range: (UInt64, UInt64) = (0, 0)  // 16 bytes on the stack; the range may span buffers
            withUnsafeMutableBytes(of: &range) { bytes in
                _ = gather(UnsafeBufferPointer(start: segmentStorage.baseAddress, count: stored),
                           into: IOBuffer(base: bytes.baseAddress, count: bytes.count))
            }
            let (rangeSector, rangeCount, rangeFlags) = withUnsafeBytes(of: &range) { bytes in
                (UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self)),
                 UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                 UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            }
            let unmap = rangeFlags & VirtioBlk.rangeUnmapFlag != 0
            // Spec: UNSUPP for any unknown flag, and for unmap on a discard.
            let isDiscard = type.rawValue == VirtioBlkRequestType.discard.rawValue
            guard rangeFlags & ~VirtioBlk.rangeUnmapFlag == 0, !(unmap && isDiscard) else {
                return VirtioBlkRequest(head: head, type: type, sector: sector, action: .complete(.unsupported),
                                        status: status)
            }
            guard case (let offset, false) = rangeSector.multipliedReportingOverflow(by: UInt64(VirtioBlk.sectorSize)),
                  fits(sector: rangeSector, count: UInt64(rangeCount), capacity: capacitySectors)
            else {
                return VirtioBlkRequest(head: head, type: type, sector: sector, action: .complete(.ioError), status: status)
            }
            return VirtioBlkRequest(head: head, type: type, sector: sector,
                                    action: .io(isDiscard ? .discard : .writeZeroes), offsetBytes: offset,
                                    lengthBytes: Int(rangeCount) * VirtioBlk.sectorSize,
                                    flags: unmap ? .mayUnmap : [], status: status)

        default:
            return VirtioBlkRequest(head: head, type: type, sector: sector, action: .complete(.unsupported), status: status)
        }
    }

    /// The type and sector of the chain's header, read without validating the rest of the chain:
    /// a cheap look at the next request before deciding to parse it. Nil when there is no
    /// readable header; `parse` then gives the reason.
    @inlinable
    public static func peekHeader(_ chain: DescriptorChain) -> (type: VirtioBlkRequestType, sector: UInt64)? {
        var chain = chain
        guard let header = try? chain.next(), !header.isDeviceWritable, header.buffer.count >= VirtioBlk.headerSize,
              let bytes = header.buffer.base else { return nil }
        return (VirtioBlkRequestType(rawValue: UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self))),
                UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
    }

    /// The data as one buffer: `.empty` without data, nil when it is scattered over several
    /// buffers (then use `segmentRequests`, `gather` or `scatter`).
    @inlinable public var data: IOBuffer? {
        switch segments.count {
        case 0: IOBuffer(base: nil, count: 0)
        case 1: segments[0]
        default: nil
        }
    }

    /// The request for the node below, for `.io` actions whose data is one buffer (the common,
    /// zero-copy case); nil otherwise.
    @inlinable
    public func blockRequest(tag: UInt32 = 0, submitNs: UInt64 = 0) -> BlockRequest? {
        guard case .io(let operation) = action, let data else { return nil }
        return BlockRequest(operation: operation, offsetBytes: offsetBytes, lengthBytes: lengthBytes, buffer: data,
                            flags: flags, tag: tag, submitNs: submitNs)
    }

    /// One node request per data buffer, at consecutive offsets, for a read or write scattered
    /// over several buffers; empty for every other action.
    @inlinable
    public func segmentRequests(tag: UInt32 = 0, submitNs: UInt64 = 0) -> SegmentRequests {
        guard case .io(let operation) = action, operation == .read || operation == .write else {
            return SegmentRequests(operation: .read, segments: UnsafeBufferPointer(start: nil, count: 0), offsetBytes: 0,
                                   tag: tag, submitNs: submitNs)
        }
        return SegmentRequests(operation: operation, segments: segments, offsetBytes: offsetBytes, tag: tag,
                               submitNs: submitNs)
    }

    /// Copies the data buffers, in order, into `buffer` (bouncing a scattered write). Returns the
    /// bytes copied: the smaller of the two lengths.
    @inlinable
    public func gather(into buffer: IOBuffer) -> Int {
        Self.gather(segments, into: buffer)
    }

    /// Copies `buffer` into the data buffers, in order (bouncing a scattered read). Returns the
    /// bytes copied: the smaller of the two lengths.
    @inlinable
    public func scatter(from buffer: IOBuffer) -> Int {
        var copied = 0
        for segment in segments {
            let count = min(segment.count, buffer.count - copied)
            guard count > 0, let target = segment.base, let source = buffer.base else { break }
            target.copyMemory(from: source + copied, byteCount: count)
            copied += count
        }
        return copied
    }

    /// Writes the status byte and returns the used length for `pushUsed`: the bytes written into
    /// device-writable buffers (data of a successful read, plus the status byte).
    @inlinable
    public func complete(_ result: VirtioBlkStatus) -> UInt32 {
        status.storeBytes(of: result.rawValue, as: UInt8.self)
        if result == .ok, case .io(.read) = action { return UInt32(lengthBytes) + 1 }
        return 1
    }

    /// Answers GET_ID: `id` truncated to 20 bytes and NUL-padded (ASCII expected), as much as the
    /// data buffers hold, then status OK. Returns the used length.
    public func completeGetID(_ id: String) -> UInt32 {
        precondition(action == .getID, "not a GET_ID request")
        let total = min(VirtioBlk.deviceIDLength, lengthBytes)
        var bytes = id.utf8.makeIterator()
        var written = 0
        for segment in segments {
            guard let base = segment.base else { continue }
            var index = 0
            while index < segment.count, written < total {
                base.storeBytes(of: bytes.next() ?? 0, toByteOffset: index, as: UInt8.self)
                index += 1
                written += 1
            }
        }
        status.storeBytes(of: VirtioBlkStatus.ok.rawValue, as: UInt8.self)
        return UInt32(written) + 1
    }

    /// Per-buffer node requests of a scattered read or write.
    public struct SegmentRequests: Sequence, IteratorProtocol {
        @usableFromInline let operation: BlockOperation
        @usableFromInline let segments: UnsafeBufferPointer<IOBuffer>
        @usableFromInline let tag: UInt32
        @usableFromInline let submitNs: UInt64
        @usableFromInline var index = 0
        @usableFromInline var offsetBytes: UInt64

        @inlinable
        init(operation: BlockOperation, segments: UnsafeBufferPointer<IOBuffer>, offsetBytes: UInt64, tag: UInt32,
             submitNs: UInt64) {
            self.operation = operation
            self.segments = segments
            self.offsetBytes = offsetBytes
            self.tag = tag
            self.submitNs = submitNs
        }

        @inlinable
        public mutating func next() -> BlockRequest? {
            guard index < segments.count else { return nil }
            let buffer = segments[index]
            index += 1
            defer { offsetBytes &+= UInt64(buffer.count) }
            return BlockRequest(operation: operation, offsetBytes: offsetBytes, lengthBytes: buffer.count, buffer: buffer,
                                tag: tag, submitNs: submitNs)
        }
    }

    @inlinable @inline(__always)
    static func step(_ chain: inout DescriptorChain) throws(ParseError) -> DescriptorChain.Segment? {
        do { return try chain.next() } catch { throw .chain(error) }
    }

    /// Whether `count` sectors from `sector` end at or before `capacity`; overflow safe.
    @inlinable @inline(__always)
    static func fits(sector: UInt64, count: UInt64, capacity: UInt64) -> Bool {
        sector <= capacity && count <= capacity - sector
    }

    @inlinable
    static func gather(_ segments: UnsafeBufferPointer<IOBuffer>, into buffer: IOBuffer) -> Int {
        var copied = 0
        for segment in segments {
            let count = min(segment.count, buffer.count - copied)
            guard count > 0, let source = segment.base, let target = buffer.base else { break }
            (target + copied).copyMemory(from: source, byteCount: count)
            copied += count
        }
        return copied
    }
}
