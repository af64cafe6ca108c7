import Glibc
import StrataRuntime

/// One request of a tenant's stream: the same under every policy, byte for byte.
struct LabRequest {
    let tenant: Int
    let isWrite: Bool
    let bytes: Int
    let offsetBytes: UInt64
    /// The request's own random number for the device's service time, so that it costs the same
    /// whichever policy sends it and whenever.
    let serviceDraw: UInt64
}

/// A tenant's requests and (for an open loop) their arrival times, drawn from the scenario's seed
/// and the tenant's position: what one tenant asks for never depends on another tenant, the
/// policy or the device.
struct LabRequestStream {
    let tenant: LabTenant
    let index: Int
    private var content: SeededRandom
    private var arrivals: SeededRandom
    private let blocks: UInt64
    private var sequentialBlock: UInt64 = 0
    /// When the next open-loop request arrives; nil once past the tenant's stop time.
    private(set) var nextArrivalNs: UInt64?

    init(tenant: LabTenant, index: Int, seed: UInt64, deviceSizeBytes: UInt64) {
        self.tenant = tenant
        self.index = index
        var root = SeededRandom(seed: seed ^ (0x5EED_0000_0000_0000 &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15))
        content = root.split()
        arrivals = root.split()
        blocks = max(1, deviceSizeBytes / UInt64(tenant.blockSize))
        if case .closed = tenant.arrival {
            nextArrivalNs = nil
        } else {
            nextArrivalNs = tenant.startNs
            advanceArrival(from: tenant.startNs, first: true)
        }
    }

    mutating func nextRequest() -> LabRequest {
        let isWrite: Bool
        switch tenant.readPerMille {
        case 1000: isWrite = false
        case 0: isWrite = true
        default: isWrite = content.next() % 1000 >= UInt64(tenant.readPerMille)
        }
        let block: UInt64
        if tenant.isRandom {
            block = content.next() % blocks
        } else {
            block = sequentialBlock
            sequentialBlock = (sequentialBlock + 1) % blocks
        }
        return LabRequest(tenant: index, isWrite: isWrite, bytes: tenant.blockSize,
                          offsetBytes: block * UInt64(tenant.blockSize), serviceDraw: content.next())
    }

    /// The open loop's arrival at `nextArrivalNs` happened: draws the one after it.
    mutating func arrived() {
        guard let now = nextArrivalNs else { preconditionFailure("lab: an arrival with none due") }
        advanceArrival(from: now, first: false)
    }

    private mutating func advanceArrival(from now: UInt64, first: Bool) {
        var gapNs: UInt64
        switch tenant.arrival {
        case .closed:
            preconditionFailure("lab: a closed loop has no arrivals")
        case .uniform(let rate):
            gapNs = first ? 0 : UInt64((1e9 / rate).rounded())
        case .poisson(let rate), .bursty(let rate, _, _):
            gapNs = Self.exponentialNs(rate: rate, random: &arrivals)
        }
        var at = now &+ max(gapNs, first ? 0 : 1)
        if case .bursty(_, let onNs, let offNs) = tenant.arrival {
            // The gap counts only time in bursts: silent spells in between are skipped over.
            var position = now - tenant.startNs
            while true {
                let phase = position % (onNs + offNs)
                if phase >= onNs {
                    position += onNs + offNs - phase
                    continue
                }
                let left = onNs - phase
                if gapNs < left {
                    position += max(gapNs, first ? 0 : 1)
                    break
                }
                gapNs -= left
                position += left
            }
            at = tenant.startNs + position
        }
        nextArrivalNs = at < tenant.stopNs ? at : nil
    }

    static func exponentialNs(rate: Double, random: inout SeededRandom) -> UInt64 {
        let uniform = (Double(random.next() >> 11) + 0.5) / 9_007_199_254_740_992.0
        return UInt64((-(1e9 / rate) * log(uniform)).rounded())
    }
}
