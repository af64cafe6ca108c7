import Glibc
import StrataRuntime

/// The bytes of a simulated disk with a volatile write cache: what reads see now (`current`), what
/// survives a power cut for certain (`media`, written only by a completed flush), and the writes
/// in between, in completion order. A power cut keeps any subset of the cached writes' 512-byte
/// sectors, chosen by the caller's generator, so a write not yet flushed may be lost or torn.
struct SimMedia {
    static let sectorBytes = 512

    /// One write (or zeroing) in the cache or in flight: `bytes` nil means zeros.
    struct Write {
        let sequence: UInt64
        let offset: Int
        let length: Int
        let bytes: [UInt8]?

        func byte(at index: Int) -> UInt8 { bytes?[index] ?? 0 }
    }

    private(set) var media: [UInt8]
    private(set) var current: [UInt8]
    private var cache: [Write] = []
    private var sequence: UInt64 = 0

    init(image: [UInt8]) {
        media = image
        current = image
    }

    var sizeBytes: Int { current.count }
    var cachedWrites: Int { cache.count }

    /// The sequence number the next write gets: a flush issued now makes durable every write
    /// whose number is below it.
    var nextSequence: UInt64 { sequence }

    /// A write about to go in flight; it reaches the cache when `complete` is called with it.
    mutating func prepareWrite(offset: Int, length: Int, bytes: [UInt8]?) -> Write {
        precondition(bytes == nil || bytes!.count == length, "a write carries exactly its length in bytes")
        defer { sequence += 1 }
        return Write(sequence: sequence, offset: offset, length: length, bytes: bytes)
    }

    /// The write completed: reads see it, and it waits in the cache for a flush. With
    /// `sectors`, only that many leading sectors land (a short write).
    mutating func complete(_ write: Write, sectors: Int? = nil) {
        var write = write
        if let sectors {
            let length = min(write.length, sectors * Self.sectorBytes)
            write = Write(sequence: write.sequence, offset: write.offset, length: length, bytes: write.bytes.map { Array($0[0..<length]) })
        }
        guard write.length > 0 else { return }
        Self.apply(write, to: &current, sector: nil)
        cache.append(write)
    }

    /// Copies `[offset, offset + count)` as reads see it into `destination`; bytes past the end read as zeros.
    func read(offset: Int, count: Int, into destination: UnsafeMutableRawPointer) {
        let available = max(0, min(count, current.count - offset))
        current.withUnsafeBytes { source in
            if available > 0 { destination.copyMemory(from: source.baseAddress! + offset, byteCount: available) }
        }
        if available < count { memset(destination + available, 0, count - available) }
    }

    /// A flush issued when `nextSequence` was `mark` completed: every write numbered below it is durable.
    mutating func persist(below mark: UInt64) {
        var kept: [Write] = []
        for write in cache {
            if write.sequence < mark { Self.apply(write, to: &media, sector: nil) } else { kept.append(write) }
        }
        cache = kept
    }

    /// What the disk holds after a power cut now: the durable bytes with, sector by sector, each
    /// cached or in-flight write kept or lost by a coin of `random` (a later write kept wins over an
    /// earlier one, as a drive's cache holds the newest data of a sector).
    func powerCut(inFlight: [Write], random: inout SeededRandom) -> (image: [UInt8], sectorsKept: Int, sectorsLost: Int) {
        var image = media
        var kept = 0
        var lost = 0
        for write in (cache + inFlight).sorted(by: { $0.sequence < $1.sequence }) {
            var start = 0
            while start < write.length {
                // Sectors of the disk, not of the write: a write at an unaligned offset tears at the disk's boundaries.
                let sectorEnd = min(write.length, (write.offset + start) / Self.sectorBytes * Self.sectorBytes + Self.sectorBytes - write.offset)
                if random.next() & 1 == 0 {
                    Self.apply(write, to: &image, sector: start..<sectorEnd)
                    kept += 1
                } else {
                    lost += 1
                }
                start = sectorEnd
            }
        }
        return (image, kept, lost)
    }

    /// Writes `write` (or the part `sector` of it) over `bytes`, growing them as a file grows.
    private static func apply(_ write: Write, to bytes: inout [UInt8], sector: Range<Int>?) {
        let part = sector ?? 0..<write.length
        let end = write.offset + part.upperBound
        if bytes.count < end { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
        bytes.withUnsafeMutableBytes { target in
            if let source = write.bytes {
                source.withUnsafeBytes { from in
                    (target.baseAddress! + write.offset + part.lowerBound).copyMemory(from: from.baseAddress! + part.lowerBound, byteCount: part.count)
                }
            } else {
                memset(target.baseAddress! + write.offset + part.lowerBound, 0, part.count)
            }
        }
    }
}
