import StrataGraph

/// QEMU's I/O limits (ThrottleLimits in the QAPI schema, ThrottleConfig in util/throttle.c): six
/// leaky buckets and the size that counts as one operation. Zero means "no limit", as in QEMU.
public struct ThrottleLimits: Sendable, Equatable {
    /// The buckets, in QEMU's BucketType order.
    public enum Bucket: Int, Sendable, CaseIterable {
        case bpsTotal, bpsRead, bpsWrite, iopsTotal, iopsRead, iopsWrite

        /// The option key of the average rate; the burst keys append `-max` and `-max-length`.
        public var optionKey: String {
            switch self {
            case .bpsTotal: "bps-total"
            case .bpsRead: "bps-read"
            case .bpsWrite: "bps-write"
            case .iopsTotal: "iops-total"
            case .iopsRead: "iops-read"
            case .iopsWrite: "iops-write"
            }
        }

        /// True for byte buckets, false for operation buckets.
        public var countsBytes: Bool { rawValue < Bucket.iopsTotal.rawValue }

        /// The buckets a request of one direction fills and must fit in (QEMU's `to_check`).
        public static func checked(isWrite: Bool) -> [Bucket] { isWrite ? writeChecks : readChecks }

        // Stored once: the throttled path asks for them on every request.
        private static let readChecks: [Bucket] = [.bpsTotal, .iopsTotal, .bpsRead, .iopsRead]
        private static let writeChecks: [Bucket] = [.bpsTotal, .iopsTotal, .bpsWrite, .iopsWrite]
    }

    /// One bucket's rates: per second, in bytes or operations.
    public struct BucketLimit: Sendable, Equatable {
        /// The sustained rate; 0 leaves the bucket unlimited.
        public var avg: UInt64
        /// The burst rate; 0 allows only QEMU's implicit burst of avg / 10.
        public var max: UInt64
        /// How many seconds a burst at `max` may last.
        public var maxLength: UInt64

        public init(avg: UInt64 = 0, max: UInt64 = 0, maxLength: UInt64 = 1) {
            self.avg = avg
            self.max = max
            self.maxLength = maxLength
        }
    }

    /// QEMU's THROTTLE_VALUE_MAX: rates above it would overflow the wait computation.
    public static let valueLimit: UInt64 = 1_000_000_000_000_000
    /// Burst lengths accepted, in seconds (one day at most).
    public static let maxLengthRange: ClosedRange<UInt64> = 1...86_400

    private var buckets = [BucketLimit](repeating: BucketLimit(), count: Bucket.allCases.count)
    /// Bytes that count as one operation in the iops buckets; 0: every request counts as one.
    public var iopsSize: UInt64 = 0

    public init() {}

    public static let unlimited = ThrottleLimits()

    public subscript(bucket: Bucket) -> BucketLimit {
        get { buckets[bucket.rawValue] }
        set { buckets[bucket.rawValue] = newValue }
    }

    /// Whether any bucket limits anything (QEMU's throttle_enabled).
    public var isEnabled: Bool { buckets.contains { $0.avg > 0 } }

    /// Every key of QEMU's ThrottleLimits with its value, as `qom-get` of a group's `limits` shows them.
    public var options: [String: UInt64] {
        var options: [String: UInt64] = ["iops-size": iopsSize]
        for bucket in Bucket.allCases {
            options[bucket.optionKey] = self[bucket].avg
            options[bucket.optionKey + "-max"] = self[bucket].max
            options[bucket.optionKey + "-max-length"] = self[bucket].maxLength
        }
        return options
    }

    /// These limits with the keys in `changes` set to new values, validated whole (QEMU's
    /// throttle_group_set_limits: `qom-set` of `limits` changes only the keys it names).
    public func merging(_ changes: [String: JSONValue], nodeName: String) throws(GraphError) -> ThrottleLimits {
        var merged: [String: JSONValue] = options.mapValues { .int(Int64($0)) }
        for (key, value) in changes {
            guard merged[key] != nil else { throw .unexpectedOption(node: nodeName, option: key) }
            merged[key] = value
        }
        var reader = OptionReader(nodeName: nodeName, options: merged)
        let limits = try ThrottleLimits(parsing: &reader)
        try reader.finish()
        return limits
    }

    /// Reads QEMU's ThrottleLimits keys from `reader` and validates them. `optionPrefix` goes in
    /// front of every key in error messages ("limits." when the keys sit in a nested object).
    /// Does not call `finish()`: the caller owns the reader.
    public init(parsing reader: inout OptionReader, optionPrefix: String = "") throws(GraphError) {
        for bucket in Bucket.allCases {
            let key = bucket.optionKey
            var limit = BucketLimit()
            limit.avg = try Self.integer(&reader, key, prefix: optionPrefix, range: 0...Self.valueLimit) ?? 0
            limit.max = try Self.integer(&reader, key + "-max", prefix: optionPrefix, range: 0...Self.valueLimit) ?? 0
            limit.maxLength = try Self.integer(&reader, key + "-max-length", prefix: optionPrefix, range: Self.maxLengthRange) ?? 1
            self[bucket] = limit
        }
        iopsSize = try Self.integer(&reader, "iops-size", prefix: optionPrefix, range: 0...Self.valueLimit) ?? 0
        try validate(nodeName: reader.nodeName, optionPrefix: optionPrefix)
    }

    /// QEMU's throttle_is_valid, in its order, each message naming the option at fault. Parsing
    /// calls it; code that builds limits by hand calls it before handing them to a group.
    public func validate(nodeName: String, optionPrefix: String = "") throws(GraphError) {
        func bad(_ key: String, _ reason: String) -> GraphError {
            .badOption(node: nodeName, option: optionPrefix + key, reason: reason)
        }
        let families: [(total: Bucket, read: Bucket, write: Bucket)] = [(.bpsTotal, .bpsRead, .bpsWrite), (.iopsTotal, .iopsRead, .iopsWrite)]
        let rates: [(suffix: String, value: KeyPath<BucketLimit, UInt64>)] = [("", \.avg), ("-max", \.max)]
        for family in families {
            for rate in rates where self[family.total][keyPath: rate.value] > 0 {
                for split in [family.read, family.write] where self[split][keyPath: rate.value] > 0 {
                    throw bad(family.total.optionKey + rate.suffix,
                              "cannot be used at the same time as '\(optionPrefix)\(split.optionKey)\(rate.suffix)': total and read/write values exclude each other")
                }
            }
        }
        if iopsSize > 0 && self[.iopsTotal].avg == 0 && self[.iopsRead].avg == 0 && self[.iopsWrite].avg == 0 {
            throw bad("iops-size", "requires an iops value to be set ('\(optionPrefix)iops-total', '\(optionPrefix)iops-read' or '\(optionPrefix)iops-write')")
        }
        for bucket in Bucket.allCases {
            let limit = self[bucket]
            let key = bucket.optionKey
            let valueRange = "must be between 0 and \(Self.valueLimit)"
            if limit.avg > Self.valueLimit { throw bad(key, "\(valueRange), got \(limit.avg)") }
            if limit.max > Self.valueLimit { throw bad(key + "-max", "\(valueRange), got \(limit.max)") }
            if !Self.maxLengthRange.contains(limit.maxLength) {
                throw bad(key + "-max-length", "must be between \(Self.maxLengthRange.lowerBound) and \(Self.maxLengthRange.upperBound), got \(limit.maxLength)")
            }
            if limit.maxLength > 1 && limit.max == 0 {
                throw bad(key + "-max-length", "requires '\(optionPrefix)\(key)-max' to be set (burst length set without burst rate)")
            }
            if limit.max > 0 && limit.maxLength > Self.valueLimit / limit.max {
                throw bad(key + "-max-length", "is too high for this burst rate: \(key)-max * \(key)-max-length must not exceed \(Self.valueLimit)")
            }
            if limit.max > 0 && limit.avg == 0 {
                throw bad(key + "-max", "requires '\(optionPrefix)\(key)' to be set")
            }
            if limit.max > 0 && limit.max < limit.avg {
                throw bad(key + "-max", "cannot be lower than '\(optionPrefix)\(key)' (\(limit.avg)), got \(limit.max)")
            }
        }
    }

    /// A whole number in `range`. JSON numbers and numeric strings (the key=value form, with size
    /// suffixes) are accepted; fractions are refused rather than truncated.
    private static func integer(_ reader: inout OptionReader, _ key: String, prefix: String,
                                range: ClosedRange<UInt64>) throws(GraphError) -> UInt64? {
        guard let value = reader.raw(key), value != .null else { return nil }
        let option = prefix + key
        let outOfRange = "must be between \(range.lowerBound) and \(range.upperBound)"
        let number: Int64
        switch value {
        case .int(let integer):
            number = integer
        case .double(let double):
            guard double.isFinite, double.rounded() == double else {
                throw .badOption(node: reader.nodeName, option: option, reason: "must be an integer, got \(double)")
            }
            guard abs(double) < 9.2e18 else {
                throw .badOption(node: reader.nodeName, option: option, reason: "\(outOfRange), got \(double)")
            }
            number = Int64(double)
        case .string(let text):
            guard let parsed = OptionReader.parseSize(text) else {
                throw .badOption(node: reader.nodeName, option: option, reason: "must be an integer, got '\(text)'")
            }
            number = parsed
        default:
            throw .badOption(node: reader.nodeName, option: option, reason: "must be an integer, got \(value.typeName)")
        }
        guard number >= 0, range.contains(UInt64(number)) else {
            throw .badOption(node: reader.nodeName, option: option, reason: "\(outOfRange), got \(number)")
        }
        return UInt64(number)
    }
}
