import StrataGraph

/// The event a blkdebug rule waits for, as QEMU names it: guest data (`read_aio`, `write_aio`,
/// `flush_to_disk`, read from the request's operation) or what a format node above said the
/// request is for (`l2_update`, `refblock_load`, ...: `DebugEvent`).
enum BlkdebugTrigger: Equatable, Sendable {
    case readAIO
    case writeAIO
    case flushToDisk
    case format(DebugEvent)

    init?(qemuName: String) {
        switch qemuName {
        case "read_aio": self = .readAIO
        case "write_aio": self = .writeAIO
        case "flush_to_disk": self = .flushToDisk
        default:
            guard let event = DebugEvent.allCases.first(where: { $0.qemuName == qemuName }) else { return nil }
            self = .format(event)
        }
    }

    /// The event names Strata's nodes fire, for error messages.
    static var firedNames: [String] { ["read_aio", "write_aio", "flush_to_disk"] + DebugEvent.allCases.compactMap(\.qemuName) }

    /// The event `request` fires, nil for metadata no QEMU event names (no rule matches it).
    init?(firedBy request: BlockRequest) {
        switch request.debugEvent {
        case .none:
            switch request.operation {
            case .read, .spliceRead: self = .readAIO
            case .write, .writeZeroes, .discard: self = .writeAIO
            case .flush: self = .flushToDisk
            }
        case .otherMetadata:
            return nil
        default:
            self = .format(request.debugEvent)
        }
    }
}
