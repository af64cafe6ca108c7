/// A view of request memory: a pointer and a length, passed by value between the actors of one
/// queue. It owns nothing.
///
/// Ownership rule (why `@unchecked Sendable` is safe): the memory belongs to the request slot of
/// the device queue that issued the request, and only the request in flight touches it until the
/// request completes. Actors handling one request run on one queue executor, one at a time.
public struct IOBuffer: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer?
    public let count: Int

    @inlinable public init(base: UnsafeMutableRawPointer?, count: Int) {
        precondition(count >= 0)
        precondition(base != nil || count == 0)
        self.base = base
        self.count = count
    }

    public static let empty = IOBuffer(base: nil, count: 0)

    @inlinable public func slice(from offset: Int, count sliceCount: Int) -> IOBuffer {
        precondition(offset >= 0 && sliceCount >= 0 && offset + sliceCount <= count)
        return IOBuffer(base: base.map { $0 + offset }, count: sliceCount)
    }

    @inlinable public func zero() {
        if let base, count > 0 { base.initializeMemory(as: UInt8.self, repeating: 0, count: count) }
    }
}
