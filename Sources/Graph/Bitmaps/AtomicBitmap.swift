import Synchronization

/// One bit per `granularity` bytes of a node, set from every queue by an atomic OR on its word:
/// queues share the words, never a lock. Dirty bitmaps, a mirror's dirty map and a backup's copy
/// map are all one of these.
public final class AtomicBitmap: @unchecked Sendable {
    // `words` is allocated once, never moves, and is only touched through atomics.
    public let granularity: UInt64
    public let sizeBytes: UInt64
    public let bitCount: Int
    private let wordCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    public init(sizeBytes: UInt64, granularity: UInt64) {
        precondition(granularity > 0 && granularity & (granularity - 1) == 0, "the granularity is a power of two")
        self.granularity = granularity
        self.sizeBytes = sizeBytes
        bitCount = Int((sizeBytes + granularity - 1) / granularity)
        wordCount = max(1, (bitCount + 63) / 64)
        words = .allocate(capacity: wordCount)
        for index in 0..<wordCount { (words + index).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: wordCount)
        words.deallocate()
    }

    /// The bits `[offset, offset + length)` touches, nil when it touches none.
    @inlinable public func bits(offsetBytes: UInt64, lengthBytes: UInt64) -> ClosedRange<Int>? {
        guard lengthBytes > 0, offsetBytes < sizeBytes else { return nil }
        return Int(offsetBytes / granularity)...Int((min(offsetBytes &+ lengthBytes, sizeBytes) - 1) / granularity)
    }

    /// Marks every chunk `[offset, offset + length)` touches.
    public func mark(offsetBytes: UInt64, lengthBytes: UInt64) {
        guard let range = bits(offsetBytes: offsetBytes, lengthBytes: lengthBytes) else { return }
        setBits(range)
    }

    public func setBits(_ range: ClosedRange<Int>) {
        var bit = range.lowerBound
        while bit <= range.upperBound {
            let inWord = min(64 - bit % 64, range.upperBound - bit + 1)
            let mask: UInt64 = inWord == 64 ? ~0 : ((1 << UInt64(inWord)) - 1) << UInt64(bit % 64)
            words[bit / 64].bitwiseOr(mask, ordering: .releasing)
            bit += inWord
        }
    }

    public func markAll() { if bitCount > 0 { setBits(0...(bitCount - 1)) } }

    public func clearAll() {
        for index in 0..<wordCount { words[index].store(0, ordering: .releasing) }
    }

    /// Clears `bit` and says whether it was set.
    public func take(_ bit: Int) -> Bool {
        let mask: UInt64 = 1 << UInt64(bit % 64)
        return words[bit / 64].bitwiseAnd(~mask, ordering: .acquiringAndReleasing).oldValue & mask != 0
    }

    public func isSet(_ bit: Int) -> Bool {
        words[bit / 64].load(ordering: .acquiring) & (1 << UInt64(bit % 64)) != 0
    }

    /// Whether any bit of `range` is set.
    public func anySet(_ range: ClosedRange<Int>) -> Bool {
        guard let first = next(from: range.lowerBound) else { return false }
        return first <= range.upperBound
    }

    /// The first set bit at or after `bit`, nil when none.
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

    /// The first clear bit at or after `bit`, `bitCount` when none.
    public func nextClear(from bit: Int) -> Int {
        var bit = bit
        while bit < bitCount {
            let word = ~words[bit / 64].load(ordering: .acquiring) & (~0 << UInt64(bit % 64))
            if word != 0 { return min(bitCount, (bit / 64) * 64 + word.trailingZeroBitCount) }
            bit = (bit / 64 + 1) * 64
        }
        return bitCount
    }

    public var dirtyCount: Int { (0..<wordCount).reduce(0) { $0 + words[$1].load(ordering: .relaxed).nonzeroBitCount } }

    /// ORs `other` in; chunks of a different granularity are mapped by the bytes they cover.
    public func merge(_ other: AtomicBitmap) {
        if other.granularity == granularity && other.bitCount == bitCount {
            for index in 0..<wordCount { words[index].bitwiseOr(other.words[index].load(ordering: .acquiring), ordering: .releasing) }
            return
        }
        var bit = other.next(from: 0)
        while let set = bit {
            mark(offsetBytes: UInt64(set) * other.granularity, lengthBytes: other.granularity)
            bit = other.next(from: set + 1)
        }
    }

    /// A copy of the bits as they are now.
    public func copy() -> AtomicBitmap {
        let copied = AtomicBitmap(sizeBytes: sizeBytes, granularity: granularity)
        for index in 0..<wordCount { copied.words[index].store(words[index].load(ordering: .acquiring), ordering: .relaxed) }
        return copied
    }

    /// Moves the bits into a new bitmap and leaves this one clear: word by word, each an atomic
    /// exchange, so a bit set meanwhile is in exactly one of the two.
    public func takeAll() -> AtomicBitmap {
        let taken = AtomicBitmap(sizeBytes: sizeBytes, granularity: granularity)
        for index in 0..<wordCount { taken.words[index].store(words[index].exchange(0, ordering: .acquiringAndReleasing), ordering: .relaxed) }
        return taken
    }

    /// Bits `first..<first + count` as bytes, bit i of the run in byte i / 8 at bit i % 8 (QEMU's
    /// serialization: little-endian words), for qcow2 bitmap clusters.
    public func serialize(firstBit: Int, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: (count + 7) / 8)
        var bit = next(from: firstBit)
        while let set = bit, set < firstBit + count {
            let index = set - firstBit
            bytes[index / 8] |= 1 << UInt8(index % 8)
            bit = next(from: set + 1)
        }
        return bytes
    }

    /// Sets the bits `serialize` wrote from `bytes`, starting at `firstBit`.
    public func deserialize(_ bytes: [UInt8], firstBit: Int) {
        for (byteIndex, byte) in bytes.enumerated() where byte != 0 {
            for shift in 0..<8 where byte & (1 << UInt8(shift)) != 0 {
                let bit = firstBit + byteIndex * 8 + shift
                if bit < bitCount { setBits(bit...bit) }
            }
        }
    }
}
