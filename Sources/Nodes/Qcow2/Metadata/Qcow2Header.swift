import StrataGraph

/// A qcow2 image header (v2 and v3, big-endian; docs/interop/qcow2.rst), parsed from the image's
/// first cluster and validated against the file's size before anything else is read: every
/// offset and size is checked for overflow and for lying inside the file, so a hostile image
/// yields an error naming the field, never a crash, a hang or an unbounded allocation.
public struct Qcow2Header: Sendable {
    public static let magic: UInt32 = 0x5146_49fb  // "QFI\xfb"
    static let version2HeaderBytes = 72
    static let version3HeaderBytes = 104
    public static let minClusterBits: UInt32 = 9
    public static let maxClusterBits: UInt32 = 21
    /// QEMU's QCOW_MAX_L1_SIZE: 32 MiB of L1 entries.
    public static let maxL1Bytes: UInt64 = 32 << 20
    /// QEMU's QCOW_MAX_REFTABLE_SIZE.
    public static let maxRefcountTableBytes: UInt64 = 8 << 20
    /// QEMU's QCOW_MAX_SNAPSHOTS.
    static let maxSnapshots: UInt32 = 65536
    /// The spec's limit on the backing file name.
    public static let maxBackingNameBytes: UInt32 = 1023

    /// Incompatible feature bits.
    static let dirtyBit: UInt64 = 1 << 0
    static let corruptBit: UInt64 = 1 << 1
    public static let externalDataFileBit: UInt64 = 1 << 2
    public static let compressionTypeBit: UInt64 = 1 << 3
    public static let extendedL2Bit: UInt64 = 1 << 4
    /// Autoclear bits: bitmaps extension consistent, external data file is raw.
    static let bitmapsAutoclearBit: UInt64 = 1 << 0
    static let dataFileRawBit: UInt64 = 1 << 1
    static let knownAutoclearBits: UInt64 = bitmapsAutoclearBit | dataFileRawBit
    static let knownIncompatibleBits: UInt64 = dirtyBit | corruptBit | externalDataFileBit | compressionTypeBit | extendedL2Bit

    public let version: UInt32
    public let backingFileName: String?
    public let clusterBits: UInt32
    public let sizeBytes: UInt64
    public let l1Size: UInt32
    public let l1TableOffset: UInt64
    public let refcountTableOffset: UInt64
    public let refcountTableClusters: UInt32
    public let snapshotCount: UInt32
    public let snapshotsOffset: UInt64
    public let incompatibleFeatures: UInt64
    public let compatibleFeatures: UInt64
    public let autoclearFeatures: UInt64
    public let refcountOrder: UInt32
    public let headerLength: UInt32
    /// Header byte 104 (v3 headers longer than 104 bytes): 0 zlib, 1 zstd.
    let compressionType: UInt8
    public let extensions: [Qcow2HeaderExtension]

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    /// Extended L2 entries: 16 bytes each, a 64-bit entry and a bitmap of 32 subclusters.
    var hasExtendedL2: Bool { incompatibleFeatures & Self.extendedL2Bit != 0 }
    /// Data clusters live in an external data file at the host offsets the L2 entries name.
    var hasDataFile: Bool { incompatibleFeatures & Self.externalDataFileBit != 0 }
    /// The external data file holds the guest contents as a raw image (host offset == guest offset).
    var hasRawDataFile: Bool { autoclearFeatures & Self.dataFileRawBit != 0 }
    /// log2 of the entries per L2 table (one cluster per table, 8 or 16 bytes an entry).
    var l2Bits: UInt32 { clusterBits - (hasExtendedL2 ? 4 : 3) }
    /// The data file name from the header extension, when there is one.
    public var dataFileName: String? {
        for case .unknown(Qcow2HeaderExtension.externalDataFileType, let data) in extensions {
            return String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
        }
        return nil
    }
    /// The image was not closed cleanly: refcounts may be stale (reads do not use them).
    var isDirty: Bool { incompatibleFeatures & Self.dirtyBit != 0 }
    /// QEMU found an inconsistency in the metadata: the image may only be opened read-only.
    var isCorrupt: Bool { incompatibleFeatures & Self.corruptBit != 0 }

    public var backingFormat: String? {
        for case .backingFormat(let name) in extensions { return name }
        return nil
    }

    /// L1 entries the virtual size needs; entries past these only serve saved VM state.
    public var l1EntriesNeeded: UInt64 {
        let bytesPerL1Entry = UInt64(1) << UInt64(clusterBits + l2Bits)
        return sizeBytes / bytesPerL1Entry + (sizeBytes % bytesPerL1Entry == 0 ? 0 : 1)
    }

    /// Parses `bytes`, the start of the image (its first cluster, or the whole file when shorter),
    /// of a file of `fileSize` bytes. Errors are `.openFailed` naming `node` and the field at fault.
    public init(parsing bytes: [UInt8], fileSize: UInt64, node: String) throws(GraphError) {
        func fail(_ reason: String) -> GraphError { .openFailed(node: node, reason: "qcow2: \(reason)") }

        guard bytes.count >= Self.version2HeaderBytes else {
            throw fail("image is too short for a qcow2 header (\(bytes.count) bytes, need \(Self.version2HeaderBytes))")
        }
        guard bytes.be32(0) == Self.magic else { throw fail("Image is not in qcow2 format (bad magic)") }
        version = bytes.be32(4)
        guard version == 2 || version == 3 else { throw fail("Unsupported qcow2 version \(version)") }
        clusterBits = bytes.be32(20)
        guard (Self.minClusterBits...Self.maxClusterBits).contains(clusterBits) else {
            throw fail("field 'cluster_bits' is \(clusterBits), must be between \(Self.minClusterBits) and \(Self.maxClusterBits)")
        }
        let clusterSize = UInt64(1) << UInt64(clusterBits)
        if bytes.be32(32) != 0 { throw fail("encrypted images are not supported (crypt_method \(bytes.be32(32)))") }

        if version == 3 {
            guard bytes.count >= Self.version3HeaderBytes else {
                throw fail("image is too short for a qcow2 v3 header (\(bytes.count) bytes, need \(Self.version3HeaderBytes))")
            }
            incompatibleFeatures = bytes.be64(72)
            compatibleFeatures = bytes.be64(80)
            autoclearFeatures = bytes.be64(88)
            refcountOrder = bytes.be32(96)
            headerLength = bytes.be32(100)
            guard headerLength >= UInt32(Self.version3HeaderBytes), headerLength % 8 == 0 else {
                throw fail("field 'header_length' is \(headerLength), must be a multiple of 8 and at least \(Self.version3HeaderBytes)")
            }
            guard UInt64(headerLength) <= clusterSize, Int(headerLength) <= bytes.count else {
                throw fail("field 'header_length' (\(headerLength)) exceeds the first cluster or the file")
            }
            guard refcountOrder <= 6 else { throw fail("field 'refcount_order' is \(refcountOrder), must be between 0 and 6") }
        } else {
            incompatibleFeatures = 0
            compatibleFeatures = 0
            autoclearFeatures = 0
            refcountOrder = 4
            headerLength = UInt32(Self.version2HeaderBytes)
        }

        // Extensions come before the feature check so that unknown bits can be named.
        let backingFileOffset = bytes.be64(8)
        let backingFileSize = bytes.be32(16)
        let extensionsEnd = backingFileOffset != 0 ? min(backingFileOffset, UInt64(bytes.count)) : UInt64(bytes.count)
        extensions = try Self.parseExtensions(bytes, from: Int(headerLength), to: Int(min(extensionsEnd, clusterSize)), fail: fail)

        let unknown = incompatibleFeatures & ~Self.knownIncompatibleBits
        if unknown != 0 {
            var names: [String] = []
            for bit in 0..<64 where unknown & (UInt64(1) << UInt64(bit)) != 0 {
                let named = extensions.lazy.compactMap { extensionValue -> String? in
                    guard case .featureNames(let table) = extensionValue else { return nil }
                    return table.first { $0.type == 0 && Int($0.bit) == bit }?.name
                }.first
                names.append(named.map { "bit \(bit) (\($0))" } ?? "bit \(bit)")
            }
            throw fail("Unsupported incompatible features: \(names.joined(separator: ", "))")
        }
        if extensions.contains(where: { if case .unknown(Qcow2HeaderExtension.externalDataFileType, _) = $0 { true } else { false } }),
           incompatibleFeatures & Self.externalDataFileBit == 0 {
            throw fail("the image names an external data file but does not set the external data file feature bit")
        }
        if autoclearFeatures & Self.dataFileRawBit != 0, incompatibleFeatures & Self.externalDataFileBit == 0 {
            throw fail("data-file-raw requires a data file")
        }
        // QEMU refuses subclusters smaller than 512 bytes (clusters under 16 KiB).
        if incompatibleFeatures & Self.extendedL2Bit != 0, clusterBits < Self.minClusterBits + 5 {
            throw fail("the cluster size (\(clusterSize)) is too small for subclusters (extended L2 entries need at least 16 KiB)")
        }
        compressionType = headerLength > UInt32(Self.version3HeaderBytes) ? bytes[Self.version3HeaderBytes] : 0
        if compressionType != 0 || incompatibleFeatures & Self.compressionTypeBit != 0 {
            guard compressionType != 0, incompatibleFeatures & Self.compressionTypeBit != 0 else {
                throw fail("field 'compression_type' (\(compressionType)) disagrees with the compression type feature bit")
            }
            guard compressionType == 1 else { throw fail("unknown compression type \(compressionType)") }
        }

        if backingFileOffset != 0 {
            guard backingFileSize <= Self.maxBackingNameBytes else {
                throw fail("field 'backing_file_size' (\(backingFileSize)) is longer than \(Self.maxBackingNameBytes)")
            }
            let (end, overflow) = backingFileOffset.addingReportingOverflow(UInt64(backingFileSize))
            guard !overflow, end <= clusterSize, end <= UInt64(bytes.count) else {
                throw fail("field 'backing_file_offset' (\(backingFileOffset)) with size \(backingFileSize) lies outside the first cluster or the file")
            }
            guard backingFileOffset >= UInt64(headerLength) else {
                throw fail("field 'backing_file_offset' (\(backingFileOffset)) overlaps the header")
            }
            backingFileName = String(decoding: bytes[Int(backingFileOffset)..<Int(end)], as: UTF8.self)
        } else {
            backingFileName = nil
        }

        sizeBytes = bytes.be64(24)
        guard sizeBytes <= UInt64(Int64.max) else { throw fail("field 'size' (\(sizeBytes)) is too large") }
        l1Size = bytes.be32(36)
        l1TableOffset = bytes.be64(40)
        refcountTableOffset = bytes.be64(48)
        refcountTableClusters = bytes.be32(56)
        snapshotCount = bytes.be32(60)
        snapshotsOffset = bytes.be64(64)

        let l1Bytes = UInt64(l1Size) * 8
        guard l1Bytes <= Self.maxL1Bytes else {
            throw fail("field 'l1_size' (\(l1Size)) is too large: the active L1 table may hold at most \(Self.maxL1Bytes / 8) entries")
        }
        guard UInt64(l1Size) >= l1EntriesNeeded else {
            throw fail("field 'l1_size' (\(l1Size)) is too small for the image size \(sizeBytes) (needs \(l1EntriesNeeded))")
        }
        try Self.checkTable("l1_table_offset", offset: l1TableOffset, bytes: l1Bytes, clusterSize: clusterSize, fileSize: fileSize, fail: fail)

        let refcountBytes = UInt64(refcountTableClusters) * clusterSize
        guard refcountBytes <= Self.maxRefcountTableBytes else {
            throw fail("field 'refcount_table_clusters' (\(refcountTableClusters)) is too large")
        }
        try Self.checkTable("refcount_table_offset", offset: refcountTableOffset, bytes: refcountBytes, clusterSize: clusterSize, fileSize: fileSize, fail: fail)

        guard snapshotCount <= Self.maxSnapshots else { throw fail("field 'nb_snapshots' (\(snapshotCount)) is too large") }
        // The snapshot table's length is only known by walking it; its start must lie in the file.
        try Self.checkTable("snapshots_offset", offset: snapshotsOffset, bytes: snapshotCount == 0 ? 0 : 1,
                            clusterSize: clusterSize, fileSize: fileSize, fail: fail)
    }

    /// A metadata table: cluster-aligned, inside the file, and clear of the header cluster.
    private static func checkTable(_ field: String, offset: UInt64, bytes: UInt64, clusterSize: UInt64, fileSize: UInt64,
                                   fail: (String) -> GraphError) throws(GraphError) {
        guard offset % clusterSize == 0 else { throw fail("field '\(field)' (\(offset)) is not aligned to the cluster size \(clusterSize)") }
        guard bytes > 0 else { return }
        guard offset >= clusterSize else { throw fail("field '\(field)' (\(offset)) overlaps the header") }
        let (end, overflow) = offset.addingReportingOverflow(bytes)
        guard !overflow, end <= fileSize else {
            throw fail("field '\(field)' (\(offset)) with \(bytes) bytes lies past the end of the file (\(fileSize) bytes)")
        }
    }

    /// Walks the extensions between the header and `end` (the backing file name or the end of the
    /// first cluster); every length is checked against `end` before any byte of it is read.
    private static func parseExtensions(_ bytes: [UInt8], from start: Int, to end: Int,
                                        fail: (String) -> GraphError) throws(GraphError) -> [Qcow2HeaderExtension] {
        var extensions: [Qcow2HeaderExtension] = []
        var offset = start
        while offset < end {
            guard end - offset >= 8 else { throw fail("header extension at offset \(offset) is truncated") }
            let type = bytes.be32(offset)
            let length = Int(bytes.be32(offset + 4))
            offset += 8
            if type == Qcow2HeaderExtension.endType { break }
            guard length <= end - offset else {
                throw fail("header extension 0x\(String(type, radix: 16)) at offset \(offset - 8) has length \(length), past the end of the header area (\(end))")
            }
            let data = Array(bytes[offset..<offset + length])
            switch type {
            case Qcow2HeaderExtension.backingFormatType:
                guard length <= Qcow2HeaderExtension.maxBackingFormatLength else {
                    throw fail("backing format extension is too long (\(length) bytes)")
                }
                extensions.append(.backingFormat(String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)))
            case Qcow2HeaderExtension.featureNameTableType:
                var names: [Qcow2FeatureName] = []
                let entry = Qcow2HeaderExtension.featureNameEntryBytes
                for index in 0..<(length / entry) {
                    let base = index * entry
                    let name = data[(base + 2)..<(base + entry)].prefix { $0 != 0 }
                    names.append(Qcow2FeatureName(type: data[base], bit: data[base + 1], name: String(decoding: name, as: UTF8.self)))
                }
                extensions.append(.featureNames(names))
            case Qcow2HeaderExtension.bitmapsType:
                extensions.append(.bitmaps(data))
            default:
                extensions.append(.unknown(type: type, data: data))
            }
            // Extension data is padded to a multiple of 8 bytes.
            offset += (length + 7) & ~7
        }
        return extensions
    }
}

extension [UInt8] {
    /// Big-endian loads; callers check bounds first.
    fileprivate func be32(_ offset: Int) -> UInt32 {
        self[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    fileprivate func be64(_ offset: Int) -> UInt64 {
        self[offset..<offset + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
