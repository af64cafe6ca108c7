/// A fixed log-linear latency scale: exact below 8 ns, then four buckets per power of two (at most
/// 25% wide) up to 2^40 ns (18 minutes), the last bucket open. Fixed, so every queue's counts
/// add up bucket by bucket and no request allocates.
public enum LatencyBuckets {
    /// 8 exact buckets, then 4 per power of two from 2^3 to 2^40.
    public static var count: Int { 8 + 38 * 4 }

    /// The bucket a latency falls in.
    @inlinable public static func index(ofNs latencyNs: UInt64) -> Int {
        if latencyNs < 8 { return Int(latencyNs) }
        let exponent = min(63 - latencyNs.leadingZeroBitCount, 40)
        let sub = exponent == 40 && latencyNs >= (1 << 41) ? 3 : Int((latencyNs >> UInt64(exponent - 2)) & 3)
        return 8 + (exponent - 3) * 4 + sub
    }

    /// The smallest latency in a bucket.
    public static func lowerBoundNs(of index: Int) -> UInt64 {
        precondition(index >= 0 && index < count, "latency bucket \(index) out of range")
        if index < 8 { return UInt64(index) }
        let exponent = (index - 8) / 4 + 3
        let sub = UInt64((index - 8) % 4)
        return (1 << UInt64(exponent)) + sub << UInt64(exponent - 2)
    }

    /// The largest latency in a bucket (the last one has none: its lower bound stands in).
    public static func upperBoundNs(of index: Int) -> UInt64 {
        index + 1 < count ? lowerBoundNs(of: index + 1) - 1 : lowerBoundNs(of: index)
    }

    /// The latency at or below which `quantile` of the samples in `counts` lie, reported as the
    /// upper bound of the bucket it falls in (so a percentile is never understated); nil without samples.
    public static func percentileNs(_ quantile: Double, counts: [UInt64]) -> UInt64? {
        precondition(quantile > 0 && quantile <= 1, "a quantile is in (0, 1]")
        precondition(counts.count == count, "counts of another scale")
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        let rank = UInt64((Double(total) * quantile).rounded(.up))
        var seen: UInt64 = 0
        for (index, bucketCount) in counts.enumerated() {
            seen += bucketCount
            if seen >= rank { return upperBoundNs(of: index) }
        }
        return upperBoundNs(of: count - 1)
    }
}
