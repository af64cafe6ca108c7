/// QEMU's leaky-bucket accounting (util/throttle.c) as a plain value: the caller passes the time,
/// so the algorithm is exact and testable without a clock, and the owner decides how to lock it.
///
/// Every admitted request fills the buckets of its direction; the buckets leak at their average
/// rate (and, for bursts longer than a second, a burst level leaks at the burst rate). A request
/// may go when no bucket it checks is over its allowance; otherwise the wait is how long the
/// excess takes to leak.
public struct ThrottleState: Sendable {
    /// One bucket's fill, in bytes or operations (fractional: iops-size splits requests).
    public struct Level: Sendable, Equatable {
        public var level: Double = 0
        public var burstLevel: Double = 0
    }

    public private(set) var limits: ThrottleLimits
    private var levels: [Level]
    private var previousLeakNs: UInt64

    public init(limits: ThrottleLimits = .unlimited, nowNs: UInt64) {
        self.limits = limits
        self.levels = [Level](repeating: Level(), count: ThrottleLimits.Bucket.allCases.count)
        self.previousLeakNs = nowNs
    }

    /// Installs new limits with empty buckets, as QEMU's throttle_config does.
    public mutating func configure(_ newLimits: ThrottleLimits, nowNs: UInt64) {
        self = ThrottleState(limits: newLimits, nowNs: nowNs)
    }

    public func level(_ bucket: ThrottleLimits.Bucket) -> Level { levels[bucket.rawValue] }

    /// Leaks every bucket for the time since the last leak (throttle_do_leak). Time never runs
    /// backwards here: callers on other threads may pass a reading taken a moment earlier.
    public mutating func leak(nowNs: UInt64) {
        guard nowNs > previousLeakNs else { return }
        let deltaNs = Double(nowNs - previousLeakNs)
        previousLeakNs = nowNs
        for bucket in ThrottleLimits.Bucket.allCases {
            let limit = limits[bucket]
            guard limit.avg > 0 else { continue }
            levels[bucket.rawValue].level = Swift.max(levels[bucket.rawValue].level - Double(limit.avg) * deltaNs / 1e9, 0)
            // A burst longer than a second keeps a second level so the burst rate itself holds.
            if limit.maxLength > 1 {
                levels[bucket.rawValue].burstLevel = Swift.max(levels[bucket.rawValue].burstLevel - Double(limit.max) * deltaNs / 1e9, 0)
            }
        }
    }

    /// Nanoseconds a request of this direction must wait, 0 when it may go now
    /// (throttle_compute_wait_for). Call `leak(nowNs:)` first.
    public func waitNs(isWrite: Bool) -> UInt64 {
        var longest: UInt64 = 0
        for bucket in ThrottleLimits.Bucket.checked(isWrite: isWrite) {
            longest = Swift.max(longest, Self.waitNs(limit: limits[bucket], level: levels[bucket.rawValue]))
        }
        return longest
    }

    /// Leaks up to `nowNs`, then returns the wait for a request of this direction.
    public mutating func waitNs(isWrite: Bool, nowNs: UInt64) -> UInt64 {
        leak(nowNs: nowNs)
        return waitNs(isWrite: isWrite)
    }

    /// Charges an admitted request to its direction's buckets (throttle_account). With iops-size
    /// set, a request larger than it counts as size / iops-size operations (fractional, as QEMU).
    public mutating func account(isWrite: Bool, bytes: UInt64) {
        let iopsSize = limits.iopsSize
        let units = iopsSize > 0 && bytes > iopsSize ? Double(bytes) / Double(iopsSize) : 1
        // The buckets a direction fills are the ones it checks.
        for bucket in ThrottleLimits.Bucket.checked(isWrite: isWrite) where limits[bucket].avg > 0 {
            let amount = bucket.countsBytes ? Double(bytes) : units
            levels[bucket.rawValue].level += amount
            if limits[bucket].maxLength > 1 { levels[bucket.rawValue].burstLevel += amount }
        }
    }

    /// One bucket's wait (throttle_compute_wait). Without a burst rate the bucket still absorbs a
    /// tenth of a second at the average rate, so a guest's short bursts are not throttled one by
    /// one; with one, it absorbs `max * max-length` before the average applies, and a burst longer
    /// than a second is itself held to `max` with the same tenth-of-a-second slack.
    static func waitNs(limit: ThrottleLimits.BucketLimit, level: Level) -> UInt64 {
        guard limit.avg > 0 else { return 0 }
        let bucketSize: Double
        let burstBucketSize: Double
        if limit.max == 0 {
            bucketSize = Double(limit.avg) / 10
            burstBucketSize = 0
        } else {
            bucketSize = Double(limit.max) * Double(limit.maxLength)
            burstBucketSize = Double(limit.max) / 10
        }
        let extra = level.level - bucketSize
        if extra > 0 { return nanoseconds(toLeak: extra, atRate: limit.avg) }
        if limit.maxLength > 1 && limit.max > 0 {
            let burstExtra = level.burstLevel - burstBucketSize
            if burstExtra > 0 { return nanoseconds(toLeak: burstExtra, atRate: limit.max) }
        }
        return 0
    }

    /// Rounded up, so a timer set for it never fires before the excess has leaked.
    private static func nanoseconds(toLeak extra: Double, atRate rate: UInt64) -> UInt64 {
        let wait = (extra * 1e9 / Double(rate)).rounded(.up)
        // Bounded so deadline arithmetic cannot overflow (about 146 years).
        return wait >= 4.6e18 ? 4_600_000_000_000_000_000 : UInt64(wait)
    }
}
