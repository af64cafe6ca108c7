import StrataGraph

/// The validated options of a qcow2 node. Checks that need the image run at open.
struct Qcow2NodeConfiguration: NodeConfiguration {
    let file: ChildLink
    /// The backing node; nil when the option is absent or null (see `backingGiven`).
    let backing: ChildLink?
    /// Whether `backing` appeared at all: null means "no backing" as in QEMU, while absence with
    /// a backing file named in the image is refused until backing files can be opened by name.
    let backingGiven: Bool
    let l2CacheBytes: Int

    /// This slice cannot write.
    var readOnly: Bool { true }

    var children: [ChildLink] { [file] + (backing.map { [$0] } ?? []) }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .file)
        backingGiven = reader.raw("backing") != nil
        backing = try reader.optionalChild("backing", role: .backing)
        guard try reader.bool("read-only", default: true) else {
            throw reader.bad("read-only", "must be on: qcow2 images are read-only in this version")
        }
        let limit = Int64(Qcow2Metadata.maxL2CacheBytes)
        let cacheSize = try reader.optionalInteger("cache-size", range: 0...limit)
        let l2CacheSize = try reader.optionalInteger("l2-cache-size", range: 0...limit)
        if let cacheSize, let l2CacheSize, l2CacheSize > cacheSize {
            throw reader.bad("l2-cache-size", "(\(l2CacheSize)) may not exceed cache-size (\(cacheSize))")
        }
        // Without writes there is no refcount cache, so all of cache-size goes to L2 tables.
        l2CacheBytes = Int(l2CacheSize ?? cacheSize ?? Int64(Qcow2Metadata.defaultL2CacheBytes))
        try reader.finish()
    }

    /// QEMU's bdrv_default_perms: the file holds metadata, so it is always read consistently and
    /// nobody else may write or resize it; the backing node is only read, and may change under
    /// this node only if this node's parents accept changing data.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        if link.role == .backing {
            let share: Permissions = parentsShare.contains(.write) ? [.write, .resize] : []
            return (parentsTake.intersection(.consistentRead), share.union([.consistentRead, .writeUnchanged]))
        }
        return (parentsTake.intersection(.consistentRead).union(.consistentRead), parentsShare.subtracting([.write, .resize]))
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let fileState = children[file] else { throw GraphError.missingChild(node: name, role: .file, child: file.nodeName) }
        let backingState = try backing.map { (link: ChildLink) throws(GraphError) -> any NodeState in
            guard let state = children[link] else { throw .missingChild(node: name, role: .backing, child: link.nodeName) }
            return state
        }
        guard let reader = Qcow2OpenReader(childState: fileState, context: context, nodeName: name) else {
            throw GraphError.openFailed(node: name, reason: "qcow2: the 'file' child '\(file.nodeName)' must be a protocol node (such as 'file') in this version")
        }
        let fileSize = fileState.sizeBytes
        // The first page holds cluster_bits; the header area is the whole first cluster.
        var head = try await reader.read(offset: 0, count: Int(min(fileSize, 4096)), what: "header")
        if head.count >= 24 {
            let clusterBits = head[20..<24].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            if (Qcow2Header.minClusterBits...Qcow2Header.maxClusterBits).contains(clusterBits) {
                let clusterBytes = min(UInt64(1) << UInt64(clusterBits), fileSize)
                if clusterBytes > UInt64(head.count) { head = try await reader.read(offset: 0, count: Int(clusterBytes), what: "header") }
            }
        }
        let header = try Qcow2Header(parsing: head, fileSize: fileSize, node: name)
        if let backingName = header.backingFileName, !backingGiven {
            throw GraphError.openFailed(node: name, reason: "qcow2: the image names the backing file '\(backingName)'; give 'backing' explicitly as a node name (or null for none): opening backing files by name is not supported yet")
        }
        let metadata = try await Qcow2Metadata(header: header, reader: reader, l2CacheBytes: l2CacheBytes)
        return Qcow2NodeState(configuration: self, metadata: metadata, file: fileState, backing: backingState)
    }
}
