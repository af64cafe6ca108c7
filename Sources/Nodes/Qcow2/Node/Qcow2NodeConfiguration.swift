import StrataGraph

/// The validated options of a qcow2 node. Checks that need the image run at open.
struct Qcow2NodeConfiguration: NodeConfiguration {
    let file: ChildLink
    /// The backing node; nil when the option is absent or null (see `backingGiven`).
    let backing: ChildLink?
    /// Whether `backing` appeared at all: null means "no backing" as in QEMU, while absence with
    /// a backing file named in the image is refused here: the daemon and the monitor fill `backing`
    /// in first (StrataEngine's ImplicitBackingChain), so only a graph built some other way meets it.
    let backingGiven: Bool
    /// The external data file (QEMU's `data-file`): required by images that keep their data in
    /// one, refused by images that do not.
    let dataFile: ChildLink?
    let l2CacheBytes: Int
    let refcountCacheBytes: Int
    let readOnly: Bool

    var children: [ChildLink] { [file] + (dataFile.map { [$0] } ?? []) + (backing.map { [$0] } ?? []) }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .file)
        backingGiven = reader.raw("backing") != nil
        backing = try reader.optionalChild("backing", role: .backing)
        dataFile = try reader.optionalChild("data-file", role: .data)
        readOnly = try reader.bool("read-only", default: false)
        let limit = Int64(Qcow2Metadata.maxL2CacheBytes)
        let cacheSize = try reader.optionalInteger("cache-size", range: 0...limit)
        let l2CacheSize = try reader.optionalInteger("l2-cache-size", range: 0...limit)
        let refcountCacheSize = try reader.optionalInteger("refcount-cache-size", range: 0...limit)
        if let cacheSize, (l2CacheSize ?? 0) + (refcountCacheSize ?? 0) > cacheSize {
            throw reader.bad("cache-size", "(\(cacheSize)) is smaller than l2-cache-size plus refcount-cache-size")
        }
        // QEMU's split: the refcount cache gets a quarter of cache-size unless sized itself; the
        // rest (or the default) goes to L2 tables. Both are rounded up to whole clusters at open.
        if let cacheSize {
            let refcount = refcountCacheSize ?? (l2CacheSize.map { cacheSize - $0 } ?? cacheSize / 4)
            refcountCacheBytes = Int(refcount)
            l2CacheBytes = Int(l2CacheSize ?? (cacheSize - refcount))
        } else {
            l2CacheBytes = Int(l2CacheSize ?? Int64(Qcow2Metadata.defaultL2CacheBytes))
            refcountCacheBytes = Int(refcountCacheSize ?? 0)
        }
        try reader.finish()
    }

    /// QEMU's bdrv_default_perms: the file holds metadata, so it is always read consistently,
    /// written and resized whenever the node is writable (metadata updates), and nobody else may
    /// write or resize it; the backing node is only read, and may change under this node only if
    /// this node's parents accept changing data. The data file is written like `file`.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        if link.role == .backing {
            let share: Permissions = parentsShare.contains(.write) ? [.write, .resize] : []
            return (parentsTake.intersection(.consistentRead), share.union([.consistentRead, .writeUnchanged]))
        }
        let take: Permissions = readOnly ? [.consistentRead] : [.consistentRead, .write, .resize]
        return (take, parentsShare.subtracting([.write, .resize]))
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let fileState = children[file] else { throw GraphError.missingChild(node: name, role: .file, child: file.nodeName) }
        let backingState = try backing.map { (link: ChildLink) throws(GraphError) -> any NodeState in
            guard let state = children[link] else { throw .missingChild(node: name, role: .backing, child: link.nodeName) }
            return state
        }
        guard let reader = Qcow2OpenReader(childState: fileState, context: context, nodeName: name) else {
            throw GraphError.openFailed(node: name, reason: "qcow2: the 'file' child '\(file.nodeName)' must be a protocol node (such as 'file') or a one-child filter over one (blkdebug) in this version")
        }
        var header = try await readHeader(reader: reader, fileSize: fileState.sizeBytes, name: name)
        if header.isDirty && !readOnly && !header.isCorrupt {
            // As QEMU: refcounts left stale by lazy refcounts are rebuilt before anything is written.
            let report: Qcow2CheckReport
            do {
                report = try await Qcow2Checker.check(io: reader, filename: name, repair: .all)
            } catch {
                throw GraphError.openFailed(node: name, reason: "qcow2: repairing the refcounts of a dirty image failed: \(error)")
            }
            if let failure = report.failure {
                throw GraphError.openFailed(node: name, reason: "qcow2: repairing the refcounts of a dirty image failed: \(failure)")
            }
            header = try await readHeader(reader: reader, fileSize: fileState.sizeBytes, name: name)
        }
        let fileSize = fileState.sizeBytes
        let dataState = try dataFileState(header: header, children: children, name: name)
        if let backingName = header.backingFileName, !backingGiven {
            throw GraphError.openFailed(node: name, reason: "qcow2: the image names the backing file '\(backingName)'; give 'backing' explicitly as a node name (or null for none)")
        }
        let metadata = try await Qcow2Metadata(header: header, reader: reader, l2CacheBytes: l2CacheBytes, growable: !readOnly)
        let (entries, bitmaps) = try await persistentBitmaps(header: header, reader: reader, fileSize: fileSize, name: name)
        let allocator = readOnly ? nil : try await openForWriting(name: name, header: header, metadata: metadata,
                                                                  reader: reader, fileSize: fileSize)
        let dataControl = try dataState.map { (state: any NodeState) throws(GraphError) -> Qcow2OpenReader in
            guard let control = Qcow2OpenReader(childState: state, context: context, nodeName: name) else {
                throw GraphError.openFailed(node: name, reason: "qcow2: the 'data-file' child must be a protocol node (such as 'file') or a one-child filter over one (blkdebug) in this version")
            }
            return control
        }
        return Qcow2NodeState(configuration: self, metadata: metadata, allocator: allocator, controlIO: reader,
                              dataControl: dataControl, file: fileState, dataFile: dataState, backing: backingState,
                              storedEntries: readOnly ? [] : entries, storedBitmaps: bitmaps)
    }

    /// The image's persistent bitmaps, when the autoclear bit vouches for them (QEMU ignores
    /// a directory a writer that did not know bitmaps may have left stale).
    private func persistentBitmaps(header: Qcow2Header, reader: Qcow2OpenReader, fileSize: UInt64,
                                   name: String) async throws(GraphError) -> ([Qcow2Bitmap], [DirtyBitmap]) {
        func fail(_ reason: String) -> GraphError { .openFailed(node: name, reason: "qcow2: \(reason)") }
        guard header.version == 3, header.autoclearFeatures & Qcow2Header.bitmapsAutoclearBit != 0,
              let data = header.extensions.lazy.compactMap({ value -> [UInt8]? in
                  if case .bitmaps(let data) = value { return data }
                  return nil
              }).first, let directory = Qcow2Bitmap.Directory(extensionData: data), directory.count > 0 else { return ([], []) }
        let entries: [Qcow2Bitmap]
        do {
            entries = try await Qcow2Bitmap.readDirectory(io: reader, directory: directory, fileSize: fileSize)
        } catch {
            throw fail("the bitmap directory is unreadable: \(error)")
        }
        let bitmaps = try await Qcow2BitmapImage.load(entries, reader: reader, clusterSize: Int(header.clusterSize), sizeBytes: header.sizeBytes,
                                                     fileSize: fileSize, fail: fail)
        return (entries, bitmaps)
    }

    /// The `data-file` child's state: given exactly when the image has an external data file.
    private func dataFileState(header: Qcow2Header, children: [ChildLink: any NodeState], name: String) throws(GraphError) -> (any NodeState)? {
        func fail(_ reason: String) -> GraphError { .openFailed(node: name, reason: "qcow2: \(reason)") }
        guard header.hasDataFile else {
            if dataFile != nil { throw fail("'data-file' can only be given for images with an external data file") }
            return nil
        }
        guard let dataFile else {
            let named = header.dataFileName.map { " '\($0)'" } ?? ""
            throw fail("the image keeps its data in the external data file\(named); give 'data-file' as a node name")
        }
        guard let state = children[dataFile] else { throw GraphError.missingChild(node: name, role: .data, child: dataFile.nodeName) }
        if header.hasRawDataFile && header.backingFileName != nil {
            throw fail("an image with a raw external data file cannot have a backing file")
        }
        return state
    }

    /// Sets the in-use flag of every persistent bitmap, durably, before anything is written, as
    /// QEMU does: the bits in the image go stale with the first write, and a crash before close
    /// stores them again must leave them marked so. Returns where the directory lies, for close.
    private func markBitmapsInUse(header: Qcow2Header, reader: Qcow2OpenReader, fileSize: UInt64,
                                  fail: (String) -> GraphError) async throws(GraphError) -> (offset: UInt64, bytes: [UInt8])? {
        guard let data = header.extensions.lazy.compactMap({ extensionValue -> [UInt8]? in
            if case .bitmaps(let data) = extensionValue { return data }
            return nil
        }).first, data.count >= 24 else { return nil }
        let count = data[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let size = data[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let offset = data[16..<24].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard count > 0 else { return nil }
        guard size <= Qcow2Bitmap.maxDirectoryBytes, offset % header.clusterSize == 0, offset >= header.clusterSize,
              offset <= fileSize, fileSize - offset >= size else {
            throw fail("the bitmap directory (offset \(offset), \(size) bytes) lies outside the file")
        }
        let original = try await reader.read(offset: offset, count: Int(size), what: "bitmap directory")
        var marked = original
        var position = 0
        for _ in 0..<count {
            guard position + 24 <= marked.count else { throw fail("the bitmap directory is truncated") }
            marked[position + 15] |= 1
            let nameSize = Int(marked[position + 18]) << 8 | Int(marked[position + 19])
            let extraSize = marked[(position + 20)..<(position + 24)].reduce(0) { $0 << 8 | Int($1) }
            position += (24 + extraSize + nameSize + 7) & ~7
        }
        do {
            try await reader.writeDurably(marked, at: offset)
        } catch {
            throw fail("could not mark the persistent bitmaps in use: \(error.status)")
        }
        return (offset, original)
    }

    /// The header, from the image's first cluster (or the whole file when shorter).
    private func readHeader(reader: Qcow2OpenReader, fileSize: UInt64, name: String) async throws(GraphError) -> Qcow2Header {
        // The first page holds cluster_bits; the header area is the whole first cluster.
        var head = try await reader.read(offset: 0, count: Int(min(fileSize, 4096)), what: "header")
        if head.count >= 24 {
            let clusterBits = head[20..<24].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            if (Qcow2Header.minClusterBits...Qcow2Header.maxClusterBits).contains(clusterBits) {
                let clusterBytes = min(UInt64(1) << UInt64(clusterBits), fileSize)
                if clusterBytes > UInt64(head.count) { head = try await reader.read(offset: 0, count: Int(clusterBytes), what: "header") }
            }
        }
        return try Qcow2Header(parsing: head, fileSize: fileSize, node: name)
    }

    /// What a writable node needs beyond a readable one: a clean image, its refcount table, and
    /// the autoclear bits this version does not know cleared (the spec's rule for writers that
    /// do not maintain what those bits vouch for).
    private func openForWriting(name: String, header: Qcow2Header, metadata: Qcow2Metadata, reader: Qcow2OpenReader,
                                fileSize: UInt64) async throws(GraphError) -> Qcow2Allocator {
        func fail(_ reason: String) -> GraphError { .openFailed(node: name, reason: "qcow2: \(reason)") }
        if header.isCorrupt { throw fail("the image is marked corrupt; it can only be opened read-only (repair it with 'strata img check -r all')") }
        if header.isDirty { throw fail("the image is still dirty after its refcounts were repaired") }
        let tableBytes = try await reader.read(offset: header.refcountTableOffset,
                                               count: Int(header.refcountTableClusters) * Int(header.clusterSize), what: "refcount table")
        var table = [UInt64](repeating: 0, count: tableBytes.count / 8)
        tableBytes.withUnsafeBytes { raw in
            for index in table.indices { table[index] = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
        }
        let refcountBlocks = max(Qcow2Metadata.minRefcountCacheBlocks, refcountCacheBytes / Int(header.clusterSize))
        let allocator: Qcow2Allocator
        do {
            allocator = try Qcow2Allocator(metadata: metadata, refcountTable: table, fileSizeBytes: fileSize,
                                           refcountCacheBlocks: refcountBlocks)
        } catch {
            throw fail("a refcount table entry is not aligned to a cluster")
        }
        if header.snapshotCount > 0 {
            do {
                let (snapshots, bytes) = try await Qcow2Snapshot.readTable(io: reader, offset: header.snapshotsOffset,
                                                                           count: header.snapshotCount, fileSize: fileSize)
                allocator.snapshots = snapshots
                allocator.snapshotTableOffset = header.snapshotsOffset
                allocator.snapshotTableBytes = bytes
                let cluster = header.clusterSize
                allocator.overlaps.snapshotRange = header.snapshotsOffset..<header.snapshotsOffset + (bytes + cluster - 1) / cluster * cluster
            } catch {
                throw fail("the snapshot table is unreadable: \(error)")
            }
        }
        if header.autoclearFeatures & Qcow2Header.bitmapsAutoclearBit != 0 {
            allocator.bitmapDirectory = try await markBitmapsInUse(header: header, reader: reader, fileSize: fileSize, fail: fail)
        }
        let unknownAutoclear = header.autoclearFeatures & ~Qcow2Header.knownAutoclearBits
        if header.version == 3 && unknownAutoclear != 0 {
            var bytes = [UInt8](repeating: 0, count: 8)
            bytes.withUnsafeMutableBytes { $0.storeBytes(of: (header.autoclearFeatures & ~unknownAutoclear).bigEndian, as: UInt64.self) }
            do {
                try await reader.writeDurably(bytes, at: 88)
            } catch {
                throw fail("could not clear the unknown autoclear feature bits: \(error.status)")
            }
        }
        return allocator
    }
}
