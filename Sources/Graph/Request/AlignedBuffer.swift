/// Request memory for the tools: 4096-byte aligned, so O_DIRECT images need no bounce buffer.
/// Owns its allocation; a request that uses it must complete before the buffer goes away.
public final class AlignedBuffer: @unchecked Sendable {
    // @unchecked Sendable: a tool hands the memory to one request at a time and reads it only
    // after that request completed.
    public static let alignment = 4096
    public let count: Int
    public let base: UnsafeMutableRawPointer

    public init(count: Int, filledWith byte: UInt8 = 0) {
        self.count = count
        base = .allocate(byteCount: max(count, 1), alignment: Self.alignment)
        base.initializeMemory(as: UInt8.self, repeating: byte, count: max(count, 1))
    }

    deinit { base.deallocate() }

    public var io: IOBuffer { IOBuffer(base: base, count: count) }

    public func slice(from offset: Int, count sliceCount: Int) -> IOBuffer { io.slice(from: offset, count: sliceCount) }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: count) }

    public func fill(_ byte: UInt8) { base.initializeMemory(as: UInt8.self, repeating: byte, count: count) }

    /// The first offset in `range` whose byte is not `byte`, or nil.
    public func firstMismatch(_ byte: UInt8, in range: Range<Int>) -> Int? {
        let view = UnsafeRawBufferPointer(bytes)
        return range.first { view[$0] != byte }
    }
}
