import CIscsi
import Glibc

/// What the LUN said about itself when the node opened, as QEMU's iscsi_open asks it: INQUIRY
/// (a direct-access block device), READ CAPACITY(16), the Block Limits and Logical Block
/// Provisioning VPD pages where the target has them, and MODE SENSE's write-protect bit.
struct IscsiLunGeometry: Sendable {
    var blockBytes: Int
    var blockCount: UInt64
    var writeProtected: Bool
    /// LBPME: the LUN is thin-provisioned, so GET LBA STATUS tells what is mapped.
    var thinProvisioned: Bool
    /// LBPRZ: unmapped blocks read as zeros.
    var unmappedReadZero: Bool
    /// LBPU: UNMAP works.
    var canUnmap: Bool
    /// LBPWS: WRITE SAME(16) may unmap.
    var canWriteSameUnmap: Bool
    /// Largest READ/WRITE in blocks (0: the target set none).
    var maxTransferBlocks: UInt32
    /// Largest UNMAP in blocks (0: none given).
    var maxUnmapBlocks: UInt32
    /// Largest WRITE SAME in blocks (0: none given).
    var maxWriteSameBlocks: UInt64
    var vendor: String
    var product: String

    var sizeBytes: UInt64 { blockCount * UInt64(blockBytes) }

    nonisolated(nonsending) static func probe(_ session: IscsiSession) async throws -> IscsiLunGeometry {
        if let reason = await session.ready() { throw IscsiError(reason) }
        let lun = session.location.lun
        let lunName = session.description

        let standard = try await command(session, "INQUIRY") { iscsi_inquiry_task($0, lun, 0, 0, 255, $1, $2) }
        defer { standard.release() }
        guard let inquiry = unmarshall(standard, as: scsi_inquiry_standard.self) else {
            throw IscsiError("\(lunName): cannot parse the INQUIRY data")
        }
        guard inquiry.device_type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS else {
            throw IscsiError("\(lunName) is a \(String(cString: scsi_devtype_to_str(inquiry.device_type))), not a block device")
        }
        let vendor = withUnsafeBytes(of: inquiry.vendor_identification) { trimmed($0) }
        let product = withUnsafeBytes(of: inquiry.product_identification) { trimmed($0) }

        let capacityTask = try await command(session, "READ CAPACITY(16)") { iscsi_readcapacity16_task($0, lun, $1, $2) }
        defer { capacityTask.release() }
        guard let capacity = unmarshall(capacityTask, as: scsi_readcapacity16.self) else {
            throw IscsiError("\(lunName): cannot parse the READ CAPACITY(16) data")
        }
        let blockBytes = Int(capacity.block_length)
        guard blockBytes >= 512, blockBytes <= 65536, blockBytes & (blockBytes - 1) == 0 else {
            throw IscsiError("\(lunName) has a block size of \(blockBytes) bytes: expected a power of two from 512 to 65536")
        }
        var geometry = IscsiLunGeometry(
            blockBytes: blockBytes, blockCount: capacity.returned_lba &+ 1, writeProtected: false,
            thinProvisioned: capacity.lbpme != 0, unmappedReadZero: capacity.lbprz != 0, canUnmap: false,
            canWriteSameUnmap: false, maxTransferBlocks: 0, maxUnmapBlocks: 0, maxWriteSameBlocks: 0,
            vendor: vendor, product: product)

        let pages = await supportedPages(session, lun: lun)
        if pages.contains(UInt8(SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS.rawValue)) {
            let task = try await command(session, "INQUIRY (Block Limits)") {
                iscsi_inquiry_task($0, lun, 1, Int32(SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS.rawValue), 255, $1, $2)
            }
            defer { task.release() }
            if let limits = unmarshall(task, as: scsi_inquiry_block_limits.self) {
                geometry.maxTransferBlocks = limits.max_xfer_len
                geometry.maxUnmapBlocks = limits.max_unmap == UInt32.max ? 0 : limits.max_unmap
                geometry.maxWriteSameBlocks = limits.max_ws_len
            }
        }
        if geometry.thinProvisioned && pages.contains(UInt8(SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING.rawValue)) {
            let task = try await command(session, "INQUIRY (Logical Block Provisioning)") {
                iscsi_inquiry_task($0, lun, 1, Int32(SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING.rawValue), 255, $1, $2)
            }
            defer { task.release() }
            if let provisioning = unmarshall(task, as: scsi_inquiry_logical_block_provisioning.self) {
                geometry.canUnmap = provisioning.lbpu != 0
                geometry.canWriteSameUnmap = provisioning.lbpws != 0
            }
        }
        // MODE SENSE is optional: a target that refuses it is taken as writable, as QEMU does.
        let sense = await session.execute {
            iscsi_modesense6_task($0, lun, 0, Int32(SCSI_MODESENSE_PC_CURRENT.rawValue), Int32(SCSI_MODEPAGE_RETURN_ALL_PAGES.rawValue),
                                  0, 255, $1, $2)
        }
        defer { sense.release() }
        if sense.isGood, let modes = unmarshall(sense, as: scsi_mode_sense.self) {
            geometry.writeProtected = modes.device_specific_parameter & 0x80 != 0
        }
        return geometry
    }

    /// The VPD pages the target lists (page 0x00); none when it refuses.
    private nonisolated(nonsending) static func supportedPages(_ session: IscsiSession, lun: Int32) async -> [UInt8] {
        let task = await session.execute {
            iscsi_inquiry_task($0, lun, 1, Int32(SCSI_INQUIRY_PAGECODE_SUPPORTED_VPD_PAGES.rawValue), 255, $1, $2)
        }
        defer { task.release() }
        guard task.isGood, let list = unmarshall(task, as: scsi_inquiry_supported_pages.self), let pages = list.pages else { return [] }
        return Array(UnsafeBufferPointer(start: pages, count: Int(list.num_pages)))
    }

    /// Runs a command the node cannot open without; throws with the target's sense otherwise.
    nonisolated(nonsending) static func command(_ session: IscsiSession, _ name: String,
                        _ start: (OpaquePointer, iscsi_command_cb, UnsafeMutableRawPointer) -> UnsafeMutablePointer<scsi_task>?)
        async throws -> IscsiCompletion {
        let completion = await session.execute(start)
        guard completion.isGood else {
            let reason = IscsiStatusMapping.describe(completion)
            completion.release()
            throw IscsiError("\(session.description): \(name) failed: \(reason)")
        }
        return completion
    }

    /// libiscsi's parse of a task's data-in (owned by the task), or nil.
    static func unmarshall<T>(_ completion: IscsiCompletion, as type: T.Type) -> T? {
        guard let task = completion.task, let parsed = scsi_datain_unmarshall(task) else { return nil }
        return parsed.assumingMemoryBound(to: T.self).pointee
    }

    private static func trimmed(_ bytes: UnsafeRawBufferPointer) -> String {
        let text = bytes.prefix { $0 != 0 }
        return String(decoding: text, as: UTF8.self).split(separator: " ").joined(separator: " ")
    }
}
