import CStrataShim

/// Aligned buffers for one queue's O_DIRECT requests whose memory, offset or length is not aligned.
/// Allocated once with the instance; a request borrows one and returns it before it completes, and
/// requests larger than a buffer go through it in pieces. Owned by one actor, so unlocked.
final class BounceBufferPool {
    struct Buffer {
        let base: UnsafeMutableRawPointer
        /// False for a temporary buffer handed out while every pooled one was borrowed.
        let pooled: Bool
    }

    let bufferSize: Int
    private let alignment: Int
    private let numaNode: Int32
    private var free: [UnsafeMutableRawPointer]
    private let capacity: Int

    init(count: Int, bufferSize: Int, alignment: Int, numaNode: Int32) {
        precondition(count > 0 && bufferSize > 0, "a bounce pool holds at least one non-empty buffer")
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "bounce buffers are aligned to a power of two")
        capacity = count
        self.bufferSize = bufferSize
        self.alignment = alignment
        self.numaNode = numaNode
        free = []
        free.reserveCapacity(count)  // returns never grow the array: no allocation after init
        for _ in 0..<count { free.append(allocate()) }
    }

    deinit {
        for base in free { strata_free_aligned(base, bufferSize, numaNode) }
    }

    /// A buffer of `bufferSize` bytes. When more requests bounce at once than the pool holds, a
    /// temporary buffer keeps them going rather than making them wait.
    func take() -> Buffer {
        if let base = free.popLast() { return Buffer(base: base, pooled: true) }
        return Buffer(base: allocate(), pooled: false)
    }

    func give(_ buffer: Buffer) {
        assert(Int(bitPattern: buffer.base) % alignment == 0, "a bounce buffer returned that this pool did not align")
        if buffer.pooled {
            assert(free.count < capacity && !free.contains(buffer.base), "a bounce buffer returned twice")
            free.append(buffer.base)
        } else {
            strata_free_aligned(buffer.base, bufferSize, numaNode)
        }
    }

    private func allocate() -> UnsafeMutableRawPointer {
        guard let base = strata_alloc_aligned(bufferSize, alignment, numaNode) else {
            fatalError("out of memory allocating a \(bufferSize)-byte bounce buffer")
        }
        return base
    }
}
