import Glibc
import StrataFormatting

/// An asynchronous QMP event: `{"timestamp": {"seconds": S, "microseconds": U}, "event": NAME,
/// "data": {...}}`, stamped with the wall clock when it happened, as QEMU stamps it.
public struct QMPEvent: Sendable {
    public let name: String
    public let data: OrderedJSON?
    public let seconds: Int64
    public let microseconds: Int64

    public init(_ name: String, data: OrderedJSON? = nil) {
        precondition(!name.isEmpty && name == name.uppercased(), "QMP event names are upper case, as QEMU's")
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        self.name = name
        self.data = data
        seconds = Int64(now.tv_sec)
        microseconds = Int64(now.tv_nsec / 1000)
    }

    var message: OrderedJSON {
        var fields: [(String, OrderedJSON)] = [
            ("timestamp", .object([("seconds", .int(seconds)), ("microseconds", .int(microseconds))])),
            ("event", .string(name)),
        ]
        if let data { fields.append(("data", data)) }
        return .object(fields)
    }
}
