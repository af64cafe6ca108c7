import StrataGraph
import StrataNodes

/// A lab scenario: tenants with their request streams, the device they share, the policies to
/// compare, how long, and the seed every stream is drawn from.
public struct LabScenario: Sendable {
    public enum Clock: String, Sendable {
        /// Simulated time: the scenario runs as fast as the machine computes it, the same on every run.
        case virtual
        /// The real graph on the monotonic clock: device queues, the policy filter, a sim node or a file.
        case real
    }

    public enum Device: Sendable, Equatable {
        /// The sim node's service-time model (on either clock).
        case sim(ServiceTimeModel.Parameters, sizeBytes: UInt64)
        /// A real file opened with O_DIRECT (real clock only).
        case file(path: String, sizeBytes: UInt64)

        public var sizeBytes: UInt64 {
            switch self {
            case .sim(_, let size), .file(_, let size): size
            }
        }
    }

    public var name: String
    public var seed: UInt64
    public var clock: Clock
    public var durationNs: UInt64
    /// Width of one point of the throughput-over-time series.
    public var intervalNs: UInt64
    public var device: Device
    public var tenants: [LabTenant]
    public var policies: [LabPolicy]

    public init(name: String, seed: UInt64, clock: Clock, durationNs: UInt64, intervalNs: UInt64, device: Device,
                tenants: [LabTenant], policies: [LabPolicy]) {
        self.name = name
        self.seed = seed
        self.clock = clock
        self.durationNs = durationNs
        self.intervalNs = intervalNs
        self.device = device
        self.tenants = tenants
        self.policies = policies
    }
}

/// One tenant: what it asks for, when, and what it was promised (to judge every policy by).
public struct LabTenant: Sendable, Equatable {
    public enum Arrival: Sendable, Equatable {
        /// A closed loop: `depth` requests outstanding, a new one as soon as one completes.
        case closed(depth: Int)
        /// An open loop: arrivals at `rate` per second, exponential gaps.
        case poisson(rate: Double)
        /// An open loop alternating `onNs` of Poisson arrivals at `rate` with `offNs` of silence.
        case bursty(rate: Double, onNs: UInt64, offNs: UInt64)
        /// An open loop with a fixed gap of 1/rate.
        case uniform(rate: Double)
    }

    public var name: String
    /// Per mille of requests that are reads.
    public var readPerMille: Int
    public var isRandom: Bool
    public var blockSize: Int
    public var arrival: Arrival
    public var startNs: UInt64
    public var stopNs: UInt64
    /// IOPS promised (0: none) and allowed (0: no limit), and a share of what is left over.
    public var reservation: UInt64
    public var limit: UInt64
    public var weight: UInt64

    public init(name: String, readPerMille: Int, isRandom: Bool, blockSize: Int, arrival: Arrival, startNs: UInt64,
                stopNs: UInt64, reservation: UInt64 = 0, limit: UInt64 = 0, weight: UInt64 = 1) {
        self.name = name
        self.readPerMille = readPerMille
        self.isRandom = isRandom
        self.blockSize = blockSize
        self.arrival = arrival
        self.startNs = startNs
        self.stopNs = stopNs
        self.reservation = reservation
        self.limit = limit
        self.weight = weight
    }
}

/// One policy to run: a scheduling-policy driver with its options, under a display name.
public struct LabPolicy: Sendable {
    public var name: String
    public var driver: String
    public var maxInFlight: Int
    /// The policy's own options as `blockdev-add` takes them, `tenants` already a list in tenant order.
    public var options: [String: JSONValue]

    public init(name: String, driver: String, maxInFlight: Int, options: [String: JSONValue]) {
        self.name = name
        self.driver = driver
        self.maxInFlight = maxInFlight
        self.options = options
    }
}
