import StrataGraph

/// An rbd node's validated options.
struct RbdNodeConfiguration: NodeConfiguration {
    let location: RbdLocation
    let readOnly: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        if let filename = try reader.optionalString("filename") {
            for key in ["pool", "image", "namespace", "snapshot", "conf", "user", "server"] where reader.has(key) {
                throw reader.bad(key, "cannot be combined with 'filename'")
            }
            location = try RbdLocation(filename: filename, nodeName: reader.nodeName)
        } else {
            location = try RbdLocation(parsing: &reader)
        }
        // A snapshot is read-only, as in QEMU.
        readOnly = try reader.bool("read-only", default: false) || location.snapshot != nil
        _ = try reader.optionalString("aio")
        _ = reader.raw("cache")
        _ = reader.raw("discard")
        _ = reader.raw("detect-zeroes")
        _ = reader.raw("auto-read-only")
        try reader.finish()
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        do {
            let connection = try await RbdConnection.open(location, readOnly: readOnly)
            do {
                return RbdNodeState(nodeName: name, connection: connection, readOnly: readOnly, sizeBytes: try await connection.sizeBytes())
            } catch {
                await connection.close()
                throw error
            }
        } catch let error as RbdError {
            throw GraphError.openFailed(node: name, reason: error.description)
        }
    }
}
