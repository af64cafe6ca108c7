/// Where a monitor listens: QSD's `--chardev socket,id=ID,path=PATH,server=on,wait=off` (or
/// `host=`/`port=`) joined with `--monitor chardev=ID[,mode=control][,pretty=on|off]`.
public struct QMPMonitorAddress: Sendable, Equatable {
    public enum Endpoint: Sendable, Equatable {
        case unix(path: String)
        case tcp(host: String, port: UInt16)
    }

    public var endpoint: Endpoint
    /// Replies and events indented, one field a line, as QEMU's `pretty=on`.
    public var pretty: Bool

    public init(_ endpoint: Endpoint, pretty: Bool = false) {
        self.endpoint = endpoint
        self.pretty = pretty
    }
}
