import Glibc
import StrataGraph
import StrataRuntime

/// One `inject-error` rule of a blkdebug node.
final class BlkdebugRule: Sendable {
    /// QEMU's BlkdebugIOType.
    enum IOType: String, Sendable {
        case read
        case write
        case writeZeroes = "write-zeroes"
        case discard
        case flush
        case blockStatus = "block-status"
    }

    let trigger: BlkdebugTrigger
    /// The engine state the rule applies in; 0 for any.
    let state: Int
    let ioType: IOType?
    let status: IOStatus
    /// The byte offset of the sector the request must cover; nil for any request.
    let offsetBytes: UInt64?
    let once: Bool

    init(parsing reader: inout OptionReader) throws(GraphError) {
        trigger = try BlkdebugTrigger.parse(&reader)
        state = Int(try reader.integer("state", default: 0, range: 0...Int64(Int32.max)))
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
        // QEMU's `immediately` fails the request without a completion callback; a Strata node
        // reports every failure as the request's status, so both spellings fail it the same way.
        _ = try reader.bool("immediately", default: false)
        try reader.finish()
    }

    /// Whether this rule, once armed, fails `request`: its I/O type matches, and it covers the
    /// rule's sector (a sector rule never matches a flush, as QEMU's).
    func matches(_ request: BlockRequest) -> Bool {
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
        if let offsetBytes {
            guard request.operation != .flush, request.lengthBytes > 0, offsetBytes >= request.offsetBytes,
                  offsetBytes < request.offsetBytes + UInt64(request.lengthBytes) else { return false }
        }
        return true
    }
}

/// One `set-state` rule: the event moves the engine from `state` (0: any) to `newState`.
struct BlkdebugStateRule: Sendable {
    let trigger: BlkdebugTrigger
    let state: Int
    let newState: Int

    init(parsing reader: inout OptionReader) throws(GraphError) {
        trigger = try BlkdebugTrigger.parse(&reader)
        state = Int(try reader.integer("state", default: 0, range: 0...Int64(Int32.max)))
        // QAPI spells it new_state, the config file too.
        newState = Int(try reader.integer("new_state", range: 0...Int64(Int32.max)))
        try reader.finish()
    }
}

extension BlkdebugTrigger {
    static func parse(_ reader: inout OptionReader) throws(GraphError) -> BlkdebugTrigger {
        let name = try reader.string("event")
        guard let trigger = BlkdebugTrigger(qemuName: name) else {
            throw reader.bad("event", "'\(name)' is not fired by Strata's nodes (these are: \(firedNames.joined(separator: ", ")))")
        }
        return trigger
    }
}
