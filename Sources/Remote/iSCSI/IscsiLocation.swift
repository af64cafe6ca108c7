import StrataGraph

/// Where a LUN is and how to log in: the options of QEMU's BlockdevOptionsIscsi, from
/// `blockdev-add` keys or an `iscsi://` URL.
struct IscsiLocation: Sendable, Equatable {
    enum HeaderDigest: String, Sendable, CaseIterable {
        case crc32c
        case none
        case crc32cNone = "crc32c-none"
        case noneCrc32c = "none-crc32c"
    }

    /// `host:port`, IPv6 hosts in brackets; libiscsi's portal syntax.
    var portal: String
    var target: String
    var lun: Int32
    var user: String?
    /// From a URL (`user%password@`), or from the secret object `passwordSecret` names, read at open.
    var password: String?
    var passwordSecret: String?
    var initiatorName: String?
    var headerDigest: HeaderDigest = .noneCrc32c
    /// Seconds a command may take before libiscsi fails it; 0 waits forever (QEMU's default).
    var timeoutSeconds: Int = 0

    static let defaultPort = "3260"

    /// The initiator name QEMU uses when none is given.
    var effectiveInitiatorName: String { initiatorName ?? "iqn.2008-11.org.linux-kvm" }

    /// `iscsi://[user[%password]@]host[:port]/target/lun`, as libiscsi parses it for QEMU: the
    /// first '%' splits user from password, and nothing is percent-decoded.
    init(url: String, nodeName: String) throws(GraphError) {
        func bad(_ reason: String) -> GraphError { .badOption(node: nodeName, option: "filename", reason: reason) }
        guard url.hasPrefix("iscsi://") else { throw bad("must start with 'iscsi://', got '\(url)'") }
        var rest = Substring(url.dropFirst("iscsi://".count))
        if let at = rest.lastIndex(of: "@"), !rest[..<at].contains("/") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let percent = credentials.firstIndex(of: "%") {
                user = String(credentials[..<percent])
                password = String(credentials[credentials.index(after: percent)...])
            } else {
                user = String(credentials)
            }
            if user?.isEmpty ?? true { throw bad("has an empty user name before '@'") }
        }
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw bad("expects iscsi://host[:port]/target/lun, got '\(url)'") }
        portal = try Self.portal(String(parts[0]), bad: bad)
        target = String(parts[1])
        guard !target.isEmpty else { throw bad("names no target: '\(url)'") }
        guard let lun = Int32(parts[2]), lun >= 0, lun < 16384 else { throw bad("expects a LUN from 0 to 16383, got '\(parts[2])'") }
        self.lun = lun
    }

    /// The blockdev-add keys.
    init(parsing reader: inout OptionReader) throws(GraphError) {
        if try reader.choice("transport", allowed: ["tcp", "iser"], default: "tcp") == "iser" {
            throw reader.bad("transport", "iser is not supported: use tcp")
        }
        let portalText = try reader.string("portal")
        portal = try Self.portal(portalText) { reason in reader.bad("portal", reason) }
        target = try reader.string("target")
        if target.isEmpty { throw reader.bad("target", "must not be empty") }
        lun = Int32(try reader.integer("lun", default: 0, range: 0...16383))
        user = try reader.optionalString("user")
        passwordSecret = try reader.optionalString("password-secret")
        if passwordSecret != nil && user == nil { throw reader.bad("password-secret", "needs 'user' too (CHAP)") }
        try parseSessionOptions(&reader)
    }

    /// The keys that go with either form: `initiator-name`, `header-digest`, `timeout`.
    mutating func parseSessionOptions(_ reader: inout OptionReader) throws(GraphError) {
        initiatorName = try reader.optionalString("initiator-name")
        headerDigest = HeaderDigest(rawValue: try reader.choice("header-digest", allowed: HeaderDigest.allCases.map(\.rawValue),
                                                                default: HeaderDigest.noneCrc32c.rawValue))!
        timeoutSeconds = Int(try reader.integer("timeout", default: 0, range: 0...Int64(Int32.max)))
    }

    /// `host[:port]` with the default port added; `[v6]:port` for IPv6.
    private static func portal(_ text: String, bad: (String) -> GraphError) throws(GraphError) -> String {
        guard !text.isEmpty else { throw bad("names no host") }
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad("has an unclosed '[' in '\(text)'") }
            let after = text[text.index(after: close)...]
            if after.isEmpty { return text + ":" + defaultPort }
            guard after.hasPrefix(":"), UInt16(after.dropFirst()) != nil else { throw bad("has a bad port in '\(text)'") }
            return text
        }
        let pieces = text.split(separator: ":", omittingEmptySubsequences: false)
        switch pieces.count {
        case 1: return text + ":" + defaultPort
        case 2:
            guard !pieces[0].isEmpty, UInt16(pieces[1]) != nil else { throw bad("expects host[:port], got '\(text)'") }
            return text
        default: throw bad("expects host[:port] or [IPv6]:port, got '\(text)'")
        }
    }
}
