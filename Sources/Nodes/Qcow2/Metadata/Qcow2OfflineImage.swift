import StrataGraph

/// A qcow2 image as the offline tools see it: the validated header, plus what the node does not
/// need at open: compression type and data file name as plain fields, the snapshot table and the
/// bitmap directory location.
public struct Qcow2OfflineImage: Sendable {
    public let header: Qcow2Header
    public let fileSize: UInt64
    /// 0 zlib, 1 zstd (header byte 104).
    public let compressionType: UInt8
    public let dataFileName: String?
    public let snapshots: [Qcow2Snapshot]
    let snapshotsBytes: UInt64
    /// The bitmap directory, only when the bitmaps autoclear bit vouches for it (as QEMU).
    let bitmapDirectory: Qcow2Bitmap.Directory?

    public var version: UInt32 { header.version }
    public var clusterSize: UInt64 { header.clusterSize }
    public var clusterBits: UInt32 { header.clusterBits }
    public var virtualSize: UInt64 { header.sizeBytes }
    public var backingFileName: String? { header.backingFileName }
    public var backingFormat: String? { header.backingFormat }
    public var refcountBits: Int { 1 << Int(header.refcountOrder) }
    public var isDirty: Bool { header.isDirty }
    public var isCorrupt: Bool { header.isCorrupt }
    public var lazyRefcounts: Bool { header.compatibleFeatures & Qcow2HeaderWriter.lazyRefcountsBit != 0 }
    public var hasDataFile: Bool { header.incompatibleFeatures & Qcow2Header.externalDataFileBit != 0 }
    public var dataFileRaw: Bool { header.autoclearFeatures & Qcow2HeaderWriter.rawDataFileAutoclearBit != 0 }
    public var extendedL2: Bool { header.incompatibleFeatures & Qcow2Header.extendedL2Bit != 0 }
    public var l2EntryBytes: Int { extendedL2 ? 16 : 8 }
    public var l2Entries: Int { Int(clusterSize) / l2EntryBytes }

    /// Reads and validates the header of the image behind `io`; `name` appears in errors.
    public static func load(io: any Qcow2ImageIO, name: String) async throws -> Qcow2OfflineImage {
        let fileSize = try await io.sizeBytes()
        let first = try await io.read(offset: 0, count: Int(min(fileSize, UInt64(2 << 20))))
        let header: Qcow2Header
        do {
            // Only the first cluster holds the header; a short file is parsed as far as it goes.
            let clusterBits = first.count >= 24 ? first.loadBE32(at: 20) : 0
            let clusterBytes = (9...21).contains(clusterBits) ? min(first.count, 1 << Int(clusterBits)) : first.count
            header = try Qcow2Header(parsing: Array(first[0..<clusterBytes]), fileSize: fileSize, node: name)
        } catch {
            if case .openFailed(_, let reason) = error { throw Qcow2ImageError("Could not open '\(name)': \(reason)") }
            throw Qcow2ImageError("Could not open '\(name)': \(error)")
        }
        if header.l1Size > 0, header.l1TableOffset == 0 {
            throw Qcow2ImageError("Could not open '\(name)': qcow2: the L1 table offset is 0 with \(header.l1Size) entries")
        }
        if header.refcountTableClusters == 0 {
            throw Qcow2ImageError("Could not open '\(name)': qcow2: Image does not contain a reference count table")
        }
        var dataFileName: String?
        var directory: Qcow2Bitmap.Directory?
        for case .unknown(let type, let data) in header.extensions where type == Qcow2HeaderExtension.externalDataFileType {
            dataFileName = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
        }
        for case .bitmaps(let data) in header.extensions {
            guard let parsed = Qcow2Bitmap.Directory(extensionData: data) else {
                throw Qcow2ImageError("Could not open '\(name)': qcow2: the bitmaps extension is too short")
            }
            if header.version >= 3, header.autoclearFeatures & Qcow2HeaderWriter.bitmapsAutoclearBit != 0 { directory = parsed }
        }
        let (snapshots, snapshotsBytes): ([Qcow2Snapshot], UInt64)
        do {
            (snapshots, snapshotsBytes) = try await Qcow2Snapshot.readTable(io: io, offset: header.snapshotsOffset, count: header.snapshotCount, fileSize: fileSize)
        } catch let error as Qcow2ImageError {
            throw Qcow2ImageError("Could not open '\(name)': qcow2: \(error.message)")
        }
        return Qcow2OfflineImage(header: header, fileSize: fileSize, compressionType: header.headerLength > 104 ? first[104] : 0,
                                 dataFileName: dataFileName, snapshots: snapshots, snapshotsBytes: snapshotsBytes, bitmapDirectory: directory)
    }

    /// The image's persistent bitmaps (empty without the extension).
    public func bitmaps(io: any Qcow2ImageIO) async throws -> [Qcow2Bitmap] {
        guard let bitmapDirectory, bitmapDirectory.count > 0 else { return [] }
        return try await Qcow2Bitmap.readDirectory(io: io, directory: bitmapDirectory, fileSize: fileSize)
    }
}
