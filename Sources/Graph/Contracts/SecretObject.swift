import FoundationEssentials

/// QEMU's `secret` object (`--object secret,id=ID,data=...` or `file=...`, `object-add
/// qom-type=secret`): a password or key that nodes name by id (`password-secret`, `key-secret`)
/// rather than carry in their options. `format` says how `data` or the file is written (raw, the
/// default, or base64). Encrypted secrets (`keyid`, `iv`) need a master key Strata does not have.
public final class SecretObject: Sendable {
    public let id: String
    public let bytes: [UInt8]

    public init(id: String, properties: [String: JSONValue]) throws(GraphError) {
        func bad(_ key: String, _ reason: String) -> GraphError { .badOption(node: id, option: key, reason: reason) }
        var reader = OptionReader(nodeName: id, options: properties)
        let format = try reader.choice("format", allowed: ["raw", "base64"], default: "raw")
        let data = try reader.optionalString("data")
        let file = try reader.optionalString("file")
        if reader.has("keyid") || reader.has("iv") {
            throw bad(reader.has("keyid") ? "keyid" : "iv", "encrypted secrets need a master key secret, which Strata does not have")
        }
        try reader.finish()
        var raw: [UInt8]
        switch (data, file) {
        case (let data?, nil):
            raw = Array(data.utf8)
        case (nil, let file?):
            guard let contents = FileManager.default.contents(atPath: file) else { throw bad("file", "cannot read '\(file)'") }
            raw = Array(contents)
        case (nil, nil):
            throw bad("data", "a secret needs data= or file=")
        case (.some, .some):
            throw bad("file", "a secret takes data= or file=, not both")
        }
        if format == "base64" {
            let text = String(decoding: raw, as: UTF8.self).filter { !$0.isWhitespace }
            guard let decoded = Data(base64Encoded: text) else { throw bad("data", "is not valid base64") }
            raw = Array(decoded)
        }
        self.id = id
        self.bytes = raw
    }

    /// The secret as text (a password).
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    /// The secret in base64 (QEMU's qcrypto_secret_lookup_as_base64: what librados takes as a key).
    public var base64: String { Data(bytes).base64EncodedString() }

    /// Where a secret lives among the daemon's shared objects.
    public static func sharedObjectName(id: String) -> String { "secret:" + id }

    /// The secret a node's option names, or QEMU's error.
    public static func lookup(_ id: String, in objects: SharedObjects) throws(GraphError) -> SecretObject {
        guard let secret = objects.existing(named: sharedObjectName(id: id), as: SecretObject.self) else {
            throw .badEdit("No secret with id '\(id)'")
        }
        return secret
    }
}
