/// One header extension of a qcow2 image (docs/interop/qcow2.rst, "Header extensions"), as this
/// slice understands it. Extensions it does not know are kept as opaque bytes: QEMU ignores them too.
public enum Qcow2HeaderExtension: Equatable, Sendable {
    /// The backing file's format name ("qcow2", "raw").
    case backingFormat(String)
    /// Names for feature bits: (type 0 incompatible / 1 compatible / 2 autoclear, bit, name).
    case featureNames([Qcow2FeatureName])
    /// Persistent dirty bitmaps: kept opaque, nothing in a read-only slice uses them.
    case bitmaps([UInt8])
    case unknown(type: UInt32, data: [UInt8])

    public static let endType: UInt32 = 0
    public static let backingFormatType: UInt32 = 0xe279_2aca
    static let featureNameTableType: UInt32 = 0x6803_f857
    public static let bitmapsType: UInt32 = 0x2385_2875
    public static let externalDataFileType: UInt32 = 0x4441_5441
    /// QEMU keeps the backing format in a 16-byte field, so a longer name is an error there.
    public static let maxBackingFormatLength = 15
    static let featureNameEntryBytes = 48
}

/// One entry of the feature name table.
public struct Qcow2FeatureName: Equatable, Sendable {
    let type: UInt8
    let bit: UInt8
    let name: String
}
