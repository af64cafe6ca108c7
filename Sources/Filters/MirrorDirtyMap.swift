import Synchronization

/// The mirror's dirty bitmap: one bit per `granularity` bytes of the source, set by writes on
/// every queue (an atomic OR on the word: queues share the map, but never a lock) and cleared by
/// the job before it copies a range.
public final class MirrorDirtyMap: @unchecked Sendable {
    // `words` is allocated once, never moves, and is only touched through atomics.
    public let granularity: UInt64
    public let sizeBytes: UInt64
    private let wordCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    public init(sizeBytes: UInt64, granularity: UInt64) {
        precondition(granularity > 0 && granularity & (granularity - 1) == 0, "the granularity is a power of two")
        self.granularity = granularity
        self.sizeBytes = sizeBytes
        let bits = Int((sizeBytes + granularity - 1) / granularity)
        wordCount = max(1, (bits + 63) / 64)
        words = .allocate(capacity: wordCount)
        for index in 0..<wordCount { (words + index).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: wordCount)
        words.deallocate()
    }

    public var bitCount: Int { Int((sizeBytes + granularity - 1) / granularity) }

    /// Marks every chunk `[offset, offset + length)` touches.
    public func mark(offsetBytes: UInt64, lengthBytes: UInt64) {
        guard lengthBytes > 0, offsetBytes < sizeBytes else { return }
        let first = Int(offsetBytes / granularity)
        let last = Int((min(offsetBytes + lengthBytes, sizeBytes) - 1) / granularity)
        for bit in first...last { words[bit / 64].bitwiseOr(1 << UInt64(bit % 64), ordering: .relaxed) }
    }

    public func markAll() {
        for bit in 0..<bitCount { words[bit / 64].bitwiseOr(1 << UInt64(bit % 64), ordering: .relaxed) }
    }

    /// Clears `bit` and says whether it was set.
    public func take(_ bit: Int) -> Bool {
        let mask: UInt64 = 1 << UInt64(bit % 64)
        return words[bit / 64].bitwiseAnd(~mask, ordering: .acquiringAndReleasing).oldValue & mask != 0
    }

    /// The first dirty chunk at or after `bit`, nil when none.
    public func next(from bit: Int) -> Int? {
        guard bit < bitCount else { return nil }
        var index = bit / 64
        var word = words[index].load(ordering: .acquiring) & (~0 << UInt64(bit % 64))
        while true {
            if word != 0 {
                let found = index * 64 + word.trailingZeroBitCount
                return found < bitCount ? found : nil
            }
            index += 1
            guard index < wordCount else { return nil }
            word = words[index].load(ordering: .acquiring)
        }
    }

    public var dirtyCount: Int { (0..<wordCount).reduce(0) { $0 + words[$1].load(ordering: .relaxed).nonzeroBitCount } }
}
