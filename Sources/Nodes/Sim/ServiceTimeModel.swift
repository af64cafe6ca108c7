import Glibc
import StrataGraph

/// How long a device takes to serve a request, for the scheduling lab: a mean service time per
/// direction with a distribution around it, a transfer time per byte, a number of requests it
/// serves at once (beyond which requests queue inside it, first come first served), and optional
/// periodic slow spells. The caller supplies each request's random draw, so the lab can give a
/// request the same cost under every policy; time is whatever clock the caller runs on.
public struct ServiceTimeModel: Sendable, Equatable {
    public enum Distribution: String, Sendable, CaseIterable {
        /// Always the mean.
        case fixed
        /// Exponential around the mean (memoryless, as a queueing model's server).
        case exponential
        /// Uniform between half and one and a half times the mean.
        case uniform
        /// Log-normal with the mean given and sigma 1: a long tail, as flash garbage collection.
        case lognormal
    }

    public struct Parameters: Sendable, Equatable {
        public var readNs: UInt64 = 100_000
        public var writeNs: UInt64 = 100_000
        public var distribution: Distribution = .fixed
        /// Requests served at once.
        public var parallelism: Int = 1
        /// Bytes per second of transfer added to the service time; 0 for none.
        public var bandwidth: UInt64 = 0
        /// Every `slowEveryNs`, for `slowForNs`, service times are `slowFactor` times longer.
        public var slowEveryNs: UInt64 = 0
        public var slowForNs: UInt64 = 0
        public var slowFactor: UInt64 = 1

        public init() {}

        /// Reads the `service-*` and `slow-*` options (the sim node's and the lab's device keys).
        /// Times are in microseconds, as fio's and the lab's.
        public init(parsing reader: inout OptionReader) throws(GraphError) {
            let day = Int64(86_400_000_000)
            readNs = UInt64(try reader.integer("service-read-us", default: 100, range: 0...day)) * 1000
            writeNs = UInt64(try reader.integer("service-write-us", default: Int64(readNs / 1000), range: 0...day)) * 1000
            let name = try reader.choice("service-distribution", allowed: Distribution.allCases.map(\.rawValue), default: "fixed")
            distribution = Distribution(rawValue: name) ?? .fixed
            parallelism = Int(try reader.integer("service-parallelism", default: 1, range: 1...4096))
            bandwidth = UInt64(try reader.integer("service-bandwidth", default: 0, range: 0...(Int64(1) << 50)))
            slowEveryNs = UInt64(try reader.integer("slow-every-us", default: 0, range: 0...day)) * 1000
            slowForNs = UInt64(try reader.integer("slow-for-us", default: 0, range: 0...day)) * 1000
            slowFactor = UInt64(try reader.integer("slow-factor", default: 1, range: 1...1_000_000))
            if slowEveryNs > 0 && slowForNs >= slowEveryNs {
                throw reader.bad("slow-for-us", "must be shorter than slow-every-us (\(slowEveryNs / 1000)), got \(slowForNs / 1000)")
            }
        }

        /// True when the options name any service-time key: the sim node then runs on time, not turns.
        public static func isGiven(in reader: OptionReader) -> Bool {
            ["service-read-us", "service-write-us", "service-distribution", "service-parallelism", "service-bandwidth",
             "slow-every-us", "slow-for-us", "slow-factor"].contains { reader.has($0) }
        }
    }

    public let parameters: Parameters
    /// When each of the device's service slots is next free.
    private var freeAtNs: [UInt64]

    public init(_ parameters: Parameters) {
        precondition(parameters.parallelism > 0)
        self.parameters = parameters
        freeAtNs = Array(repeating: 0, count: parameters.parallelism)
    }

    /// Requests the device holds now (in service or queued inside it).
    public func busySlots(atNs nowNs: UInt64) -> Int { freeAtNs.reduce(0) { $0 + ($1 > nowNs ? 1 : 0) } }

    /// A request arrives at the device at `nowNs`: when it completes. `draw` is the request's own
    /// random number (any 64 bits).
    public mutating func completion(isWrite: Bool, bytes: Int, nowNs: UInt64, draw: UInt64) -> UInt64 {
        var slot = 0
        for index in 1..<freeAtNs.count where freeAtNs[index] < freeAtNs[slot] { slot = index }
        let startNs = Swift.max(nowNs, freeAtNs[slot])
        let doneNs = startNs + serviceNs(isWrite: isWrite, bytes: bytes, startNs: startNs, draw: draw)
        freeAtNs[slot] = doneNs
        return doneNs
    }

    /// The service time of one request that starts at `startNs`.
    public func serviceNs(isWrite: Bool, bytes: Int, startNs: UInt64, draw: UInt64) -> UInt64 {
        let mean = Double(isWrite ? parameters.writeNs : parameters.readNs)
        // 53 bits of the draw as a uniform in (0, 1).
        let uniform = (Double(draw >> 11) + 0.5) / 9_007_199_254_740_992.0
        var service: Double
        switch parameters.distribution {
        case .fixed: service = mean
        case .exponential: service = -mean * Glibc.log(uniform)
        case .uniform: service = mean * (0.5 + uniform)
        case .lognormal:
            // The inverse normal CDF by Acklam's rational approximation (|error| < 1.2e-9); mean
            // exp(mu + 1/2) equals the mean given, so mu = ln(mean) - 1/2.
            service = Glibc.exp(Glibc.log(Swift.max(mean, 1)) - 0.5 + Self.inverseNormal(uniform))
        }
        if parameters.bandwidth > 0 { service += Double(bytes) * 1e9 / Double(parameters.bandwidth) }
        if parameters.slowEveryNs > 0 && startNs % parameters.slowEveryNs < parameters.slowForNs {
            service *= Double(parameters.slowFactor)
        }
        return UInt64(Swift.min(service.rounded(), 1e15))
    }

    // Stored once: arrays built inside the function would allocate on every request.
    private static let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
                 -3.066479806614716e+01, 2.506628277459239e+00]
    private static let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
                 -1.328068155288572e+01]
    private static let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
                 4.374664141464968e+00, 2.938163982698783e+00]
    private static let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]

    static func inverseNormal(_ p: Double) -> Double {
        let (a, b, c, d) = (Self.a, Self.b, Self.c, Self.d)
        let low = 0.02425
        if p < low {
            let q = Glibc.sqrt(-2 * Glibc.log(p))
            return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        }
        if p > 1 - low {
            let q = Glibc.sqrt(-2 * Glibc.log(1 - p))
            return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        }
        let q = p - 0.5
        let r = q * q
        return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    }
}
