import StrataGraph

/// An iscsi node's validated options.
struct IscsiNodeConfiguration: NodeConfiguration {
    let location: IscsiLocation
    let readOnly: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        if let filename = try reader.optionalString("filename") {
            for key in ["transport", "portal", "target", "lun", "user", "password-secret"] where reader.has(key) {
                throw reader.bad(key, "cannot be combined with 'filename'")
            }
            var location = try IscsiLocation(url: filename, nodeName: reader.nodeName)
            try location.parseSessionOptions(&reader)
            self.location = location
        } else {
            location = try IscsiLocation(parsing: &reader)
        }
        readOnly = try reader.bool("read-only", default: false)
        _ = try reader.optionalString("aio")
        _ = reader.raw("cache")
        _ = reader.raw("discard")
        _ = reader.raw("detect-zeroes")
        _ = reader.raw("auto-read-only")
        try reader.finish()
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        var location = location
        if let secret = location.passwordSecret { location.password = try SecretObject.lookup(secret, in: context.sharedObjects).text }
        do {
            return try await IscsiNodeState.open(name: name, location: location, readOnly: readOnly, context: context)
        } catch let error as IscsiError {
            throw GraphError.openFailed(node: name, reason: error.description)
        }
    }
}
