import CIscsi

/// One GET LBA STATUS answer: the first descriptor, the one covering the LBA asked about.
struct IscsiLbaStatus: Sendable {
    let lba: UInt64
    let blockCount: UInt64
    let mapped: Bool

    nonisolated(nonsending) static func query(_ session: IscsiSession, fromLBA lba: UInt64) async throws -> IscsiLbaStatus {
        let lun = session.location.lun
        let completion = try await IscsiLunGeometry.command(session, "GET LBA STATUS") {
            iscsi_get_lba_status_task($0, lun, lba, 8 + 16, $1, $2)
        }
        defer { completion.release() }
        guard let answer = IscsiLunGeometry.unmarshall(completion, as: scsi_get_lba_status.self), answer.num_descriptors > 0,
              let first = answer.descriptors?.pointee, first.lba <= lba, first.lba + UInt64(first.num_blocks) > lba else {
            throw IscsiError("\(session.description): GET LBA STATUS answered no descriptor for LBA \(lba)")
        }
        // The descriptor may start before the LBA asked about.
        return IscsiLbaStatus(lba: lba, blockCount: UInt64(first.num_blocks) - (lba - first.lba),
                              mapped: first.provisioning == SCSI_PROVISIONING_TYPE_MAPPED)
    }
}
