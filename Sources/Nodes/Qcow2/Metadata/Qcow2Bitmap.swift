/// One persistent dirty bitmap from a qcow2 image's bitmap directory
/// (docs/interop/qcow2.rst, "Bitmaps extension" and "Bitmap directory").
public struct Qcow2Bitmap: Sendable, Equatable {
    public let name: String
    public let tableOffset: UInt64
    public let tableEntries: UInt32
    public let flags: UInt32
    public let granularityBits: UInt8

    public var granularity: UInt64 { UInt64(1) << UInt64(min(granularityBits, 63)) }
    /// QEMU's names for the flag bits, as `qemu-img info` lists them.
    public var flagNames: [String] {
        var names: [String] = []
        if flags & 1 != 0 { names.append("in-use") }
        if flags & 2 != 0 { names.append("auto") }
        return names
    }

    /// The bitmaps extension: where the directory lies.
    struct Directory: Sendable, Equatable {
        let count: UInt32
        let bytes: UInt64
        let offset: UInt64

        init?(extensionData data: [UInt8]) {
            guard data.count >= 24 else { return nil }
            count = data.loadBE32(at: 0)
            bytes = data.loadBE64(at: 8)
            offset = data.loadBE64(at: 16)
        }
    }

    /// QEMU's QCOW2_MAX_BITMAPS, QCOW2_MAX_BITMAP_DIRECTORY_SIZE and BME_MAX_TABLE_SIZE.
    static let maxBitmaps: UInt32 = 65535
    static let maxDirectoryBytes: UInt64 = 1024 * 65535
    static let maxTableEntries: UInt32 = 0x800_0000
    /// Bitmap table entries: the data cluster offset, and the "all ones" flag.
    static let tableOffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let tableReservedMask: UInt64 = 0xff00_0000_0000_01fe

    /// Reads the directory; throws when it is malformed (QEMU then calls the image corrupt).
    static func readDirectory(io: any Qcow2ImageIO, directory: Directory, fileSize: UInt64) async throws -> [Qcow2Bitmap] {
        guard directory.count <= maxBitmaps, directory.bytes <= maxDirectoryBytes, directory.bytes >= UInt64(directory.count) * 24,
              directory.offset.addingReportingOverflow(directory.bytes).partialValue <= fileSize, directory.offset <= fileSize else {
            throw Qcow2ImageError("bitmap directory (\(directory.count) bitmaps, \(directory.bytes) bytes at \(directory.offset)) is invalid")
        }
        let bytes = try await io.read(offset: directory.offset, count: Int(directory.bytes))
        var bitmaps: [Qcow2Bitmap] = []
        var position = 0
        while position < bytes.count {
            guard bytes.count - position >= 24 else { throw Qcow2ImageError("bitmap directory entry at \(position) is truncated") }
            let nameSize = Int(bytes.loadBE16(at: position + 18))
            let extraSize = Int(bytes.loadBE32(at: position + 20))
            let entryBytes = (24 + extraSize + nameSize + 7) & ~7
            guard extraSize <= 1024, entryBytes <= bytes.count - position else {
                throw Qcow2ImageError("bitmap directory entry at \(position) is too long")
            }
            let nameStart = position + 24 + extraSize
            bitmaps.append(Qcow2Bitmap(
                name: String(decoding: bytes[nameStart..<nameStart + nameSize], as: UTF8.self),
                tableOffset: bytes.loadBE64(at: position), tableEntries: bytes.loadBE32(at: position + 8),
                flags: bytes.loadBE32(at: position + 12), granularityBits: bytes[position + 17]))
            position += entryBytes
        }
        guard bitmaps.count == Int(directory.count) else {
            throw Qcow2ImageError("bitmap directory holds \(bitmaps.count) bitmaps, the header says \(directory.count)")
        }
        return bitmaps
    }
}
