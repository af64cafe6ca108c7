/// One entry of a qcow2 image's internal snapshot table (docs/interop/qcow2.rst, "Snapshots").
public struct Qcow2Snapshot: Sendable, Equatable {
    public let l1TableOffset: UInt64
    public let l1Size: UInt32
    public let id: String
    public let name: String
    public let dateSeconds: UInt32
    public let dateNanoseconds: UInt32
    public let vmClockNanoseconds: UInt64
    public let vmStateSize: UInt64
    /// The guest size when taken (extra data), nil for old snapshots without it.
    public let diskSize: UInt64?
    public let icount: UInt64?

    static let fixedBytes = 40
    /// QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA and QCOW_MAX_SNAPSHOTS_SIZE.
    static let maxExtraData = 1024
    static let maxTableBytes: UInt64 = 1024 * 65536

    /// Reads `count` entries from `offset`; returns them and the table's length in bytes. Every
    /// length is bounded before it is read, so a hostile table fails cleanly.
    static func readTable(io: any Qcow2ImageIO, offset: UInt64, count: UInt32, fileSize: UInt64) async throws -> (snapshots: [Qcow2Snapshot], bytes: UInt64) {
        var snapshots: [Qcow2Snapshot] = []
        var position = offset
        for index in 0..<count {
            guard position - offset + UInt64(fixedBytes) <= maxTableBytes, position + UInt64(fixedBytes) <= fileSize else {
                throw Qcow2ImageError("snapshot table entry \(index) at offset \(position) lies past the end of the file or the table size limit")
            }
            let fixed = try await io.read(offset: position, count: fixedBytes)
            let idSize = Int(fixed.loadBE16(at: 12))
            let nameSize = Int(fixed.loadBE16(at: 14))
            let extraSize = Int(fixed.loadBE32(at: 36))
            guard extraSize <= maxExtraData else {
                throw Qcow2ImageError("snapshot table entry \(index) has too much extra data (\(extraSize) bytes)")
            }
            let variable = extraSize + idSize + nameSize
            let end = position + UInt64(fixedBytes + variable)
            guard end <= fileSize, end - offset <= maxTableBytes else {
                throw Qcow2ImageError("snapshot table entry \(index) at offset \(position) lies past the end of the file or the table size limit")
            }
            let rest = try await io.read(offset: position + UInt64(fixedBytes), count: variable)
            let extra = Array(rest[0..<extraSize])
            snapshots.append(Qcow2Snapshot(
                l1TableOffset: fixed.loadBE64(at: 0), l1Size: fixed.loadBE32(at: 8),
                id: String(decoding: rest[extraSize..<extraSize + idSize], as: UTF8.self),
                name: String(decoding: rest[(extraSize + idSize)..<variable], as: UTF8.self),
                dateSeconds: fixed.loadBE32(at: 16), dateNanoseconds: fixed.loadBE32(at: 20),
                vmClockNanoseconds: fixed.loadBE64(at: 24),
                vmStateSize: extraSize >= 8 ? extra.loadBE64(at: 0) : UInt64(fixed.loadBE32(at: 32)),
                diskSize: extraSize >= 16 ? extra.loadBE64(at: 8) : nil,
                icount: extraSize >= 24 ? extra.loadBE64(at: 16) : nil))
            position = (end + 7) & ~7
        }
        return (snapshots, position - offset)
    }
}
