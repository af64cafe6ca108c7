import Glibc
import StrataGraph
import StrataRuntime
import Synchronization

/// One `inject-error` rule of a blkdebug node.
final class BlkdebugRule: Sendable {
    enum Event: String, Sendable {
        case readAIO = "read_aio"
        case writeAIO = "write_aio"
        case flushToDisk = "flush_to_disk"
    }

    /// QEMU's BlkdebugIOType.
    enum IOType: String, Sendable {
        case read
        case write
        case writeZeroes = "write-zeroes"
        case discard
        case flush
        case blockStatus = "block-status"
    }

    let event: Event
    let ioType: IOType?
    let status: IOStatus
    /// The byte offset of the sector the request must cover; nil for any request.
    let offsetBytes: UInt64?
    let once: Bool
    private let fired = Atomic<Bool>(false)

    init(parsing reader: inout OptionReader) throws(GraphError) {
        let eventName = try reader.string("event")
        guard let event = Event(rawValue: eventName) else {
            throw reader.bad("event", "'\(eventName)' is not fired by Strata's request path (read_aio, write_aio and flush_to_disk are)")
        }
        self.event = event
        if let typeName = try reader.optionalString("iotype") {
            guard let ioType = IOType(rawValue: typeName) else { throw reader.bad("iotype", "does not accept value '\(typeName)'") }
            self.ioType = ioType
        } else {
            ioType = nil
        }
        status = IOStatus(errno: Int32(try reader.integer("errno", default: Int64(EIO), range: 1...4095)))
        let sector = try reader.integer("sector", default: -1, range: -1...(Int64.max / 512))
        offsetBytes = sector >= 0 ? UInt64(sector) * 512 : nil
        once = try reader.bool("once", default: false)
        _ = try reader.bool("immediately", default: false)
        _ = try reader.optionalInteger("state", range: 0...Int64(Int32.max))
        try reader.finish()
    }

    /// The status a request fails with under this rule, nil when the rule lets it pass. A `once`
    /// rule fires for one request only, across queues (an atomic exchange decides which).
    func verdict(for request: BlockRequest) -> IOStatus? {
        guard matches(request) else { return nil }
        if once { return fired.exchange(true, ordering: .acquiringAndReleasing) ? nil : status }
        return status
    }

    private func matches(_ request: BlockRequest) -> Bool {
        switch (event, request.operation) {
        case (.readAIO, .read), (.readAIO, .spliceRead), (.writeAIO, .write), (.writeAIO, .writeZeroes), (.writeAIO, .discard),
             (.flushToDisk, .flush):
            break
        default:
            return false
        }
        if let ioType {
            let requestType: IOType = switch request.operation {
            case .read, .spliceRead: .read
            case .write: .write
            case .writeZeroes: .writeZeroes
            case .discard: .discard
            case .flush: .flush
            }
            guard requestType == ioType else { return false }
        }
        if let offsetBytes, request.operation != .flush {
            guard offsetBytes >= request.offsetBytes, offsetBytes < request.offsetBytes + UInt64(max(0, request.lengthBytes)) else { return false }
        }
        return true
    }
}
