/// Serializes a qcow2 header and its extensions into the image's first cluster as QEMU's
/// qcow2_update_header lays them out: the fixed header (72 bytes for v2, 112 for v3 with the
/// compression type byte), then the backing format, external data file and (v3) feature name
/// table extensions, the end marker, and the backing file name right after it.
public struct Qcow2HeaderWriter {
    public var version: UInt32 = 3
    public var backingFile: String?
    public var backingFormat: String?
    public var dataFile: String?
    public var clusterBits: UInt32 = 16
    public var sizeBytes: UInt64 = 0
    public var l1Size: UInt32 = 0
    public var l1TableOffset: UInt64 = 0
    public var refcountTableOffset: UInt64 = 0
    public var refcountTableClusters: UInt32 = 0
    public var snapshotCount: UInt32 = 0
    public var snapshotsOffset: UInt64 = 0
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var compressionType: UInt8 = 0
    /// Extensions an amend keeps from the image (the bitmap directory, then unknown ones in
    /// their order), written after the feature name table as qcow2_update_header does.
    public var keptExtensions: [(type: UInt32, data: [UInt8])] = []

    public init() {}

    /// The compatible feature bit for lazy refcounts and the autoclear bits.
    public static let lazyRefcountsBit: UInt64 = 1 << 0
    public static let bitmapsAutoclearBit: UInt64 = 1 << 0
    public static let rawDataFileAutoclearBit: UInt64 = 1 << 1
    static let version3HeaderLength = 112

    /// The names QEMU writes for every feature it knows, in its order.
    static let featureNames: [Qcow2FeatureName] = [
        .init(type: 0, bit: 0, name: "dirty bit"),
        .init(type: 0, bit: 1, name: "corrupt bit"),
        .init(type: 0, bit: 2, name: "external data file"),
        .init(type: 0, bit: 3, name: "compression type"),
        .init(type: 0, bit: 4, name: "extended L2 entries"),
        .init(type: 1, bit: 0, name: "lazy refcounts"),
        .init(type: 2, bit: 0, name: "bitmaps"),
        .init(type: 2, bit: 1, name: "raw external data"),
    ]

    /// The header bytes (not padded to the cluster); fails when they do not fit in one cluster.
    /// qemu-img 7.2 writes the feature name table only with clusters of 8 KiB and more (seen
    /// with hexdump), and leaves it out when it alone would not fit.
    static let minClusterBitsForFeatureTable: UInt32 = 13

    public func serialize() throws(ImageOptionError) -> [UInt8] {
        do {
            return try serialize(featureTable: version >= 3 && clusterBits >= Self.minClusterBitsForFeatureTable)
        } catch {
            guard version >= 3 else { throw error }
            return try serialize(featureTable: false)
        }
    }

    private func serialize(featureTable: Bool) throws(ImageOptionError) -> [UInt8] {
        let headerLength = version >= 3 ? Self.version3HeaderLength : Qcow2Header.version2HeaderBytes
        var bytes = [UInt8](repeating: 0, count: headerLength)
        bytes.storeBE32(Qcow2Header.magic, at: 0)
        bytes.storeBE32(version, at: 4)
        bytes.storeBE32(clusterBits, at: 20)
        bytes.storeBE64(sizeBytes, at: 24)
        bytes.storeBE32(l1Size, at: 36)
        bytes.storeBE64(l1TableOffset, at: 40)
        bytes.storeBE64(refcountTableOffset, at: 48)
        bytes.storeBE32(refcountTableClusters, at: 56)
        bytes.storeBE32(snapshotCount, at: 60)
        bytes.storeBE64(snapshotsOffset, at: 64)
        if version >= 3 {
            bytes.storeBE64(incompatibleFeatures, at: 72)
            bytes.storeBE64(compatibleFeatures, at: 80)
            bytes.storeBE64(autoclearFeatures, at: 88)
            bytes.storeBE32(refcountOrder, at: 96)
            bytes.storeBE32(UInt32(headerLength), at: 100)
            bytes[104] = compressionType
        }

        func appendExtension(_ type: UInt32, _ data: [UInt8]) {
            var header = [UInt8](repeating: 0, count: 8)
            header.storeBE32(type, at: 0)
            header.storeBE32(UInt32(data.count), at: 4)
            bytes += header + data + [UInt8](repeating: 0, count: (8 - data.count % 8) % 8)
        }
        if let backingFormat { appendExtension(Qcow2HeaderExtension.backingFormatType, Array(backingFormat.utf8)) }
        if let dataFile { appendExtension(Qcow2HeaderExtension.externalDataFileType, Array(dataFile.utf8)) }
        if featureTable {
            var table: [UInt8] = []
            for feature in Self.featureNames {
                var entry = [UInt8](repeating: 0, count: Qcow2HeaderExtension.featureNameEntryBytes)
                entry[0] = feature.type
                entry[1] = feature.bit
                for (index, byte) in feature.name.utf8.prefix(46).enumerated() { entry[2 + index] = byte }
                table += entry
            }
            appendExtension(Qcow2HeaderExtension.featureNameTableType, table)
        }
        for kept in keptExtensions { appendExtension(kept.type, kept.data) }
        bytes += [UInt8](repeating: 0, count: 8)

        if let backingFile {
            bytes.storeBE64(UInt64(bytes.count), at: 8)
            bytes.storeBE32(UInt32(backingFile.utf8.count), at: 16)
            bytes += Array(backingFile.utf8)
        }
        guard bytes.count <= 1 << Int(clusterBits) else {
            throw ImageOptionError("The header and its extensions (\(bytes.count) bytes) do not fit in one cluster of \(1 << Int(clusterBits)) bytes")
        }
        return bytes
    }
}
