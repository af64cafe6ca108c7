import Glibc
import StrataGraph
import StrataRuntime

/// What a sim node's disk went through, for the simulation's report.
public struct SimCounters: Sendable, Equatable {
    public var requests = 0
    public var ioErrors = 0
    public var noSpaceErrors = 0
    public var shortWrites = 0
    public var flushes = 0

    public init() {}

    public var faults: Int { ioErrors + noSpaceErrors + shortWrites }
}

/// The disk after a power cut: its bytes, and how many sectors written since the last flush it kept or lost.
public struct SimPowerCut: Sendable {
    public let image: [UInt8]
    public let atRequest: Int
    public let sectorsKept: Int
    public let sectorsLost: Int
}

/// A sim node's shared state: its disk, its generator and the simulation's switches, under one
/// lock. Every queue's instance goes through it, in the order its requests arrive, which the
/// simulation keeps deterministic by running one queue.
public final class SimNodeState: NodeState {
    enum Fault {
        case ioError
        case noSpace
        case shortWrite(sectors: Int)
    }

    /// What `begin` decided for one request.
    struct Plan {
        let latencyTurns: Int
        /// On the service-time model: when the request completes, on the queue's clock.
        let completionNs: UInt64?
        let fault: Fault?
        let write: SimMedia.Write?
        let flushMark: UInt64
    }

    private struct World {
        var media: SimMedia
        var random: SeededRandom
        var cutRandom: SeededRandom
        var inFlight: [UInt64: SimMedia.Write] = [:]
        var counters = SimCounters()
        var faultsArmed = false
        var cutAtRequest: Int?
        var cut: SimPowerCut?
        var service: ServiceTimeModel?

        mutating func cutPower() {
            guard cut == nil else { return }
            let result = media.powerCut(inFlight: inFlight.values.map { $0 }, random: &cutRandom)
            cut = SimPowerCut(image: result.image, atRequest: counters.requests, sectorsKept: result.sectorsKept, sectorsLost: result.sectorsLost)
        }
    }

    let configuration: SimNodeConfiguration
    private let world: Locked<World>

    init(configuration: SimNodeConfiguration, image: [UInt8]) {
        self.configuration = configuration
        var random = SeededRandom(seed: configuration.seed)
        let cutRandom = random.split()
        world = Locked(World(media: SimMedia(image: image), random: random, cutRandom: cutRandom,
                             service: configuration.service.map(ServiceTimeModel.init)))
    }

    public var sizeBytes: UInt64 { UInt64(world.withLock { $0.media.sizeBytes }) }

    public func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        SimNodeInstance(state: self, executor: queue.executor, clock: queue.clock)
    }

    // MARK: The simulation's switches

    /// From now on, faults strike at the configured rate, and the power goes at the
    /// `cutAtRequest`-th request from now (counting this node's requests), if given.
    public func arm(faults: Bool, cutAtRequest: Int?) {
        world.withLock { world in
            world.faultsArmed = faults
            world.cutAtRequest = cutAtRequest.map { world.counters.requests + $0 }
        }
    }

    /// Cuts the power now, if it is still on.
    public func cutPower() { world.withLock { $0.cutPower() } }

    /// The disk as the power cut left it, once it came.
    public var powerCut: SimPowerCut? { world.withLock { $0.cut } }

    /// The durable bytes: after a clean close, the whole image.
    public var durableImage: [UInt8] { world.withLock { $0.media.media } }

    public var counters: SimCounters { world.withLock { $0.counters } }

    // MARK: Requests

    /// Draws a request's latency and fault, and puts a write in flight. Nil when the power is off.
    func begin(_ request: BlockRequest, nowNs: UInt64) -> Plan? {
        world.withLock { world -> Plan? in
            guard world.cut == nil else { return nil }
            world.counters.requests += 1
            if let at = world.cutAtRequest, world.counters.requests >= at {
                world.cutPower()
                return nil
            }
            var latency = 0
            var completionNs: UInt64?
            if world.service != nil {
                let draw = world.random.next()
                completionNs = world.service!.completion(isWrite: request.operation.isWrite, bytes: request.lengthBytes,
                                                         nowNs: nowNs, draw: draw)
            } else if configuration.maxLatencyTurns > 0 {
                latency = Int(world.random.next() % UInt64(configuration.maxLatencyTurns + 1))
            }
            let fault = world.faultsArmed && world.random.chance(perMillion: configuration.faultPerMillion)
                ? Self.drawFault(request, random: &world.random) : nil
            var write: SimMedia.Write?
            switch request.operation {
            case .write:
                let bytes = [UInt8](UnsafeRawBufferPointer(start: request.buffer.base, count: request.lengthBytes))
                write = world.media.prepareWrite(offset: Int(request.offsetBytes), length: request.lengthBytes, bytes: bytes)
            case .writeZeroes, .discard:
                // A discard on this disk zeroes, as a punched hole reads.
                write = world.media.prepareWrite(offset: Int(request.offsetBytes), length: request.lengthBytes, bytes: nil)
            default:
                break
            }
            if let write { world.inFlight[write.sequence] = write }
            return Plan(latencyTurns: latency, completionNs: completionNs, fault: fault, write: write, flushMark: world.media.nextSequence)
        }
    }

    /// Completes a request `begin` planned: its effect on the disk, or its fault.
    func finish(_ request: BlockRequest, _ plan: Plan) -> IOStatus {
        world.withLock { world -> IOStatus in
            if let write = plan.write { world.inFlight[write.sequence] = nil }
            guard world.cut == nil else { return .ioError }
            switch plan.fault {
            case .ioError?:
                world.counters.ioErrors += 1
                return .ioError
            case .noSpace?:
                world.counters.noSpaceErrors += 1
                return .noSpace
            case .shortWrite(let sectors)?:
                world.counters.shortWrites += 1
                if let write = plan.write { world.media.complete(write, sectors: sectors) }
                return .ioError
            case nil:
                break
            }
            switch request.operation {
            case .read:
                world.media.read(offset: Int(request.offsetBytes), count: request.lengthBytes, into: request.buffer.base!)
            case .write, .writeZeroes, .discard:
                world.media.complete(plan.write!)
            case .flush:
                world.counters.flushes += 1
                if !configuration.ignoresFlush { world.media.persist(below: plan.flushMark) }
            case .spliceRead:
                preconditionFailure("the instance declines splice reads before planning them")
            }
            return .ok
        }
    }

    private static func drawFault(_ request: BlockRequest, random: inout SeededRandom) -> Fault {
        switch random.next() % 3 {
        case 0: return .ioError
        case 1 where request.operation.isWrite: return .noSpace
        case 2 where request.operation == .write:
            return .shortWrite(sectors: Int(random.next() % UInt64(max(1, request.lengthBytes / SimMedia.sectorBytes))))
        default: return .ioError
        }
    }
}

extension SimNodeState: LeafNodeState {}

extension SimNodeState: BlockStatusQuerying {
    /// Every byte of the disk is data, as on a file without holes.
    public func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let size = sizeBytes
        let length = offsetBytes < size ? min(maxLengthBytes, size - offsetBytes) : 0
        return BlockStatusExtent(lengthBytes: length, isData: true, isZero: false, isAllocated: true, hostOffset: offsetBytes)
    }
}
