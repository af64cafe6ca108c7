import StrataNodes

/// `qemu-img amend` for qcow2 (QEMU 7.2's qcow2_amend_options), offline over `Qcow2ImageIO`:
/// the same steps in the same order, with the same refusals, so a failure part way leaves the
/// image as QEMU would (e.g. upgraded, then the backing file change refused).
///
/// Opening for writing repairs a dirty image first, as QEMU's open does. Every header update is
/// one write of the whole first cluster from offset 0, between flushes, so the header switches
/// from the old to the new state only once everything it names is durable.
///
/// Not supported (refused with a clear error): changing the refcount width or the virtual size,
/// growing the refcount table during a downgrade, and downgrading an image with persistent
/// bitmaps (QEMU 7.2 leaves such an image with leaked clusters and a stale bitmap extension).
public final class Qcow2Amender {
    let io: any Qcow2ImageIO
    let name: String
    private(set) var image: Qcow2OfflineImage
    /// The header fields amend changes, as QEMU's BDRVQcow2State holds them between updates.
    private var version: UInt32
    private var incompatible: UInt64
    private var compatible: UInt64
    private var autoclear: UInt64
    private var compressionType: UInt8
    private var dataFileName: String?
    /// Gets the fraction done when a long step (zero cluster expansion) makes progress.
    public var progress: (Double) -> Void = { _ in }

    /// Opens the image behind `io` for amending: refuses a corrupt image and repairs a dirty one.
    /// `filename` names it in messages and locates a relative backing file.
    public init(io: any Qcow2ImageIO, filename: String) async throws {
        self.io = io
        name = filename
        var loaded = try await Qcow2OfflineImage.load(io: io, name: filename)
        if loaded.isCorrupt { throw Qcow2ImageError("Could not open '\(filename)': qcow2: Image is corrupt; cannot be opened read/write") }
        if let backing = loaded.backingFileName {
            let path = ImageInfo.resolve(backing, relativeTo: filename)
            do {
                _ = try Qcow2FileIO(path: path, writable: false)
            } catch {
                throw Qcow2ImageError("Could not open '\(filename)': Could not open backing file: \(error)")
            }
        }
        if loaded.isDirty {
            let report = try await Qcow2Checker.check(io: io, filename: filename, repair: .all)
            guard report.failure == nil, report.corruptions == 0, report.checkErrors == 0 else {
                throw Qcow2ImageError("Could not open '\(filename)': qcow2: Could not repair dirty image")
            }
            loaded = try await Qcow2OfflineImage.load(io: io, name: filename)
        }
        image = loaded
        version = loaded.version
        incompatible = loaded.header.incompatibleFeatures
        compatible = loaded.header.compatibleFeatures
        autoclear = loaded.header.autoclearFeatures
        compressionType = loaded.compressionType
        dataFileName = loaded.dataFileName
    }

    /// Applies `options` in qcow2_amend_options' order.
    public func amend(_ options: Qcow2AmendOptions) async throws {
        // The option list is walked in its declared order: encrypt.* first, then the rest.
        if !options.encryptionKeys.isEmpty { throw Qcow2ImageError("Can't amend encryption options - encryption not present") }
        let oldVersion = version
        var newVersion = version
        if let compat = options.compat {
            switch compat {
            case "0.10", "v2": newVersion = 2
            case "1.1", "v3": newVersion = 3
            default: throw Qcow2ImageError("Unknown compatibility level \(compat)")
            }
        }
        let currentRefcountBits = UInt64(image.refcountBits)
        let refcountBits = options.refcountBits ?? currentRefcountBits
        if options.refcountBits != nil, refcountBits == 0 || refcountBits > 64 || refcountBits & (refcountBits - 1) != 0 {
            throw Qcow2ImageError("Refcount width must be a power of two and may not exceed 64 bits")
        }
        if options.dataFile != nil, !image.hasDataFile {
            throw Qcow2ImageError("data-file can only be set for images that use an external data file")
        }
        let dataFileRaw = options.dataFileRaw ?? image.dataFileRaw
        if dataFileRaw, !image.dataFileRaw { throw Qcow2ImageError("data-file-raw cannot be set on existing images") }
        let lazyRefcounts = options.lazyRefcounts ?? image.lazyRefcounts

        // Upgrade first: some features need compat=1.1.
        if newVersion > oldVersion { try await upgrade() }

        if refcountBits != currentRefcountBits {
            if newVersion < 3, refcountBits != 16 {
                throw Qcow2ImageError("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
            }
            throw Qcow2ImageError("Changing the refcount width (from \(currentRefcountBits) to \(refcountBits) bits) is not supported; 'strata img convert -O qcow2 -o refcount_bits=\(refcountBits)' makes a copy with it")
        }

        if dataFileRaw {
            autoclear |= Qcow2HeaderWriter.rawDataFileAutoclearBit
        } else {
            autoclear &= ~Qcow2HeaderWriter.rawDataFileAutoclearBit
        }
        if let dataFile = options.dataFile { dataFileName = dataFile.isEmpty ? nil : dataFile }
        try await writeHeader()

        if options.backingFile != nil || options.backingFormat != nil {
            if options.backingFile != image.backingFileName || options.backingFormat != image.backingFormat {
                throw Qcow2ImageError("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.")
            }
        }

        if lazyRefcounts != (compatible & Qcow2HeaderWriter.lazyRefcountsBit != 0) {
            if lazyRefcounts {
                if newVersion < 3 {
                    throw Qcow2ImageError("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
                }
                compatible |= Qcow2HeaderWriter.lazyRefcountsBit
            } else {
                // The image is clean here: a dirty one was repaired when it was opened.
                compatible &= ~Qcow2HeaderWriter.lazyRefcountsBit
            }
            try await writeHeader()
        }

        if let size = options.sizeBytes, size != 0, size != image.virtualSize {
            throw Qcow2ImageError("Changing the virtual size (from \(image.virtualSize) to \(size) bytes) is not supported by amend")
        }

        // Downgrade last, once features v2 cannot hold may have been dropped above.
        if newVersion < oldVersion { try await downgrade() }
        progress(1)
    }

    // MARK: - Versions

    /// qcow2_upgrade: v3 wants every snapshot's 64-bit VM state size and disk size.
    private func upgrade() async throws {
        if image.snapshots.contains(where: { $0.diskSize == nil }) {
            throw Qcow2ImageError("Failed to update the snapshot table: snapshots without the extra data v3 requires cannot be rewritten by amend")
        }
        version = 3
        try await writeHeader()
    }

    /// qcow2_downgrade: refuses what v2 cannot hold, expands zero clusters, writes a v2 header.
    private func downgrade() async throws {
        if image.header.refcountOrder != 4 { throw Qcow2ImageError("compat=0.10 requires refcount_bits=16") }
        if image.hasDataFile { throw Qcow2ImageError("Cannot downgrade an image with a data file") }
        for snapshot in image.snapshots where snapshot.vmStateSize > UInt64(UInt32.max) || (snapshot.diskSize ?? image.virtualSize) != image.virtualSize {
            throw Qcow2ImageError("Internal snapshots prevent downgrade of image")
        }
        let unsupported = incompatible & ~Qcow2Header.compressionTypeBit
        if unsupported != 0 {
            throw Qcow2ImageError("Cannot downgrade an image with incompatible features 0x\(String(unsupported, radix: 16)) set")
        }
        if !(try await image.bitmaps(io: io)).isEmpty {
            throw Qcow2ImageError("Cannot downgrade an image with persistent dirty bitmaps (v2 cannot hold them); remove them first")
        }
        // Expansion allocates clusters by the stored refcounts: they must be sound first.
        let check = try await Qcow2Checker.check(io: io, filename: name, repair: nil)
        if check.corruptions > 0 || check.checkErrors > 0 || check.failure != nil {
            throw Qcow2ImageError("Cannot downgrade an image with \(check.corruptions) corruptions; run 'strata img check -r all' first")
        }
        compatible = 0
        autoclear = 0

        let refcounts = try await Qcow2OfflineRefcounts(io: io, image: image)
        let expansion = Qcow2ZeroClusterExpansion(io: io, image: image, refcounts: refcounts, hasBacking: image.backingFileName != nil)
        do {
            try await expansion.run(progress: progress)
        } catch let error as Qcow2ImageError {
            throw Qcow2ImageError("Failed to turn zero into data clusters: \(error.message)")
        }

        if incompatible & Qcow2Header.compressionTypeBit != 0 {
            if try await hasCompressedClusters() {
                throw Qcow2ImageError("Cannot downgrade an image with zstd compression type and existing compressed clusters")
            }
            incompatible &= ~Qcow2Header.compressionTypeBit
            compressionType = 0
        }
        version = 2
        try await writeHeader()
    }

    /// qcow2_has_compressed_clusters: looks at the active image only, as QEMU's block status.
    private func hasCompressedClusters() async throws -> Bool {
        let entries = Int(image.header.l1Size)
        guard entries > 0 else { return false }
        let l1 = try await io.read(offset: image.header.l1TableOffset, count: entries * 8)
        for index in 0..<entries {
            let l2Offset = l1.loadBE64(at: index * 8) & Qcow2Checker.l1OffsetMask
            guard l2Offset != 0 else { continue }
            let l2 = try await io.read(offset: l2Offset, count: Int(image.clusterSize))
            for slot in 0..<image.l2Entries where l2.loadBE64(at: slot * image.l2EntryBytes) & Qcow2ClusterMapping.compressedFlag != 0 {
                return true
            }
        }
        return false
    }

    // MARK: - The header

    /// qcow2_update_header: serializes the current state and writes it as the first cluster
    /// (unless that is what the file holds already), flushing before and after.
    private func writeHeader() async throws {
        let header = image.header
        var writer = Qcow2HeaderWriter()
        writer.version = version
        writer.backingFile = header.backingFileName
        writer.backingFormat = header.backingFormat
        writer.dataFile = dataFileName
        writer.clusterBits = header.clusterBits
        writer.sizeBytes = header.sizeBytes
        writer.l1Size = header.l1Size
        writer.l1TableOffset = header.l1TableOffset
        writer.refcountTableOffset = header.refcountTableOffset
        writer.refcountTableClusters = header.refcountTableClusters
        writer.snapshotCount = header.snapshotCount
        writer.snapshotsOffset = header.snapshotsOffset
        writer.incompatibleFeatures = incompatible
        writer.compatibleFeatures = compatible
        writer.autoclearFeatures = autoclear
        writer.refcountOrder = header.refcountOrder
        writer.compressionType = compressionType
        for kept in header.extensions {
            switch kept {
            case .bitmaps(let data):
                // Only a directory the autoclear bit vouches for survives, as QEMU drops stale ones.
                if version >= 3, autoclear & Qcow2HeaderWriter.bitmapsAutoclearBit != 0 {
                    writer.keptExtensions.append((Qcow2HeaderExtension.bitmapsType, data))
                }
            case .unknown(let type, let data) where type != Qcow2HeaderExtension.externalDataFileType:
                writer.keptExtensions.append((type, data))
            default:
                break
            }
        }
        if version < 3 { writer.autoclearFeatures = 0 }
        let bytes: [UInt8]
        do {
            bytes = try writer.serialize()
        } catch {
            throw Qcow2ImageError("Failed to update the image header: \(error.message)")
        }
        let cluster = bytes + [UInt8](repeating: 0, count: Int(image.clusterSize) - bytes.count)
        let current = try await io.read(offset: 0, count: cluster.count)
        guard current != cluster else { return }
        try await io.flush()
        try await io.write(offset: 0, bytes: cluster)
        try await io.flush()
    }
}
