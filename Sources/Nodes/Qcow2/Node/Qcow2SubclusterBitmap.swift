/// The second word of an extended L2 entry (docs/interop/qcow2.rst, "Extended L2 Entries"):
/// bit x (0-31) says subcluster x is allocated in the host cluster, bit 32 + x that it reads as
/// zeros; both set is corruption. QEMU's qcow2_get_subcluster_type reads it the same way.
struct Qcow2SubclusterBitmap: Equatable {
    var raw: UInt64

    static let subclusters = 32
    static let allAllocated: UInt64 = 0xffff_ffff
    static let allZeroes: UInt64 = 0xffff_ffff << 32

    init(_ raw: UInt64) { self.raw = raw }

    /// What one subcluster holds.
    enum Kind: Equatable {
        case allocated
        case zero
        /// Not in this image: the backing file's data, or zeros without one.
        case unallocated
    }

    /// Allocation bits for subclusters `range` (both ends within 0...32).
    static func allocationMask(_ range: Range<Int>) -> UInt64 {
        guard !range.isEmpty else { return 0 }
        let ones = range.count == 64 ? UInt64.max : (UInt64(1) << UInt64(range.count)) - 1
        return ones << UInt64(range.lowerBound)
    }

    static func zeroMask(_ range: Range<Int>) -> UInt64 { allocationMask(range) << 32 }

    /// A subcluster both allocated and zero: the entry is corrupt.
    var isInvalid: Bool { (raw >> 32) & raw != 0 }
    var hasAllocated: Bool { raw & Self.allAllocated != 0 }

    func kind(_ subcluster: Int) -> Kind {
        if raw & (UInt64(1) << UInt64(subcluster)) != 0 { return .allocated }
        if raw & (UInt64(1) << UInt64(32 + subcluster)) != 0 { return .zero }
        return .unallocated
    }

    /// How many subclusters from `first` (below `limit`) are of the same kind as `first`.
    func run(from first: Int, below limit: Int) -> (kind: Kind, count: Int) {
        let kind = kind(first)
        var end = first + 1
        while end < limit && self.kind(end) == kind { end += 1 }
        return (kind, end - first)
    }

    /// Whether every subcluster in `range` is allocated.
    func allAllocated(_ range: Range<Int>) -> Bool {
        let mask = Self.allocationMask(range)
        return raw & mask == mask
    }

    /// Whether a write of `length` bytes at `inCluster` may overwrite the host cluster in place:
    /// every subcluster it touches is allocated (and the bitmap is sound).
    func allowsOverwrite(inCluster: Int, length: Int, subclusterBits: UInt32) -> Bool {
        let first = inCluster >> Int(subclusterBits)
        let last = (inCluster + length - 1) >> Int(subclusterBits)
        return allAllocated(first..<last + 1) && !isInvalid
    }

    /// How the bytes from `inCluster` (at most `length`, within the cluster) read: the mapping of
    /// the run of subclusters there that read alike, and how many bytes that run covers. `cluster`
    /// is the entry's mapping (never `.zero`: extended entries have no zero flag). Nil when entry
    /// and bitmap contradict each other, which QEMU calls corruption.
    func mapping(of cluster: Qcow2ClusterMapping, inCluster: Int, length: Int,
                 subclusterBits: UInt32) -> (mapping: Qcow2ClusterMapping, bytes: Int)? {
        switch cluster {
        case .compressed:
            return raw == 0 ? (cluster, length) : nil
        case .corrupt:
            return (cluster, length)
        case .zero:
            return nil
        case .normal, .unallocated:
            if isInvalid { return nil }
            if cluster == .unallocated && hasAllocated { return nil }
            let bits = Int(subclusterBits)
            let first = inCluster >> bits
            let (kind, count) = run(from: first, below: ((inCluster + length - 1) >> bits) + 1)
            let bytes = min(length, ((first + count) << bits) - inCluster)
            switch kind {
            case .allocated: return (cluster, bytes)
            case .zero: return (.zero, bytes)
            case .unallocated: return (.unallocated, bytes)
            }
        }
    }
}
