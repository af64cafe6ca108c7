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

extension Qcow2Snapshot {
    /// A new snapshot entry as qemu-img 7.2 writes one: 24 bytes of extra data (large VM state
    /// size, disk size, and an icount of 0: qemu-img clears the whole entry first).
    init(l1TableOffset: UInt64, l1Size: UInt32, id: String, name: String, dateSeconds: UInt32, dateNanoseconds: UInt32, diskSize: UInt64) {
        self.init(l1TableOffset: l1TableOffset, l1Size: l1Size, id: id, name: name, dateSeconds: dateSeconds,
                  dateNanoseconds: dateNanoseconds, vmClockNanoseconds: 0, vmStateSize: 0, diskSize: diskSize, icount: 0)
    }

    /// A whole table: each entry starts 8-byte aligned, and the table ends where its last entry
    /// does (QEMU's qcow2_write_snapshots).
    static func table(_ entries: [Qcow2Snapshot]) -> [UInt8] {
        var bytes: [UInt8] = []
        for entry in entries {
            while bytes.count % 8 != 0 { bytes.append(0) }
            bytes += entry.serialized()
        }
        return bytes
    }

    /// The entry as stored in the table, without padding.
    func serialized() -> [UInt8] {
        var extra: [UInt8] = []
        func append64(_ value: UInt64, to bytes: inout [UInt8]) { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) } }
        append64(vmStateSize, to: &extra)
        if let diskSize { append64(diskSize, to: &extra) }
        if let icount { append64(icount, to: &extra) }
        var bytes: [UInt8] = []
        func append(_ value: UInt64, _ width: Int) { for index in (0..<width).reversed() { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(8 * index))) } }
        append(l1TableOffset, 8)
        append(UInt64(l1Size), 4)
        append(UInt64(id.utf8.count), 2)
        append(UInt64(name.utf8.count), 2)
        append(UInt64(dateSeconds), 4)
        append(UInt64(dateNanoseconds), 4)
        append(vmClockNanoseconds, 8)
        append(vmStateSize > UInt64(UInt32.max) ? 0 : vmStateSize, 4)
        append(UInt64(extra.count), 4)
        bytes += extra + Array(id.utf8) + Array(name.utf8)
        return bytes
    }
}
