import CIscsi
import Glibc
import StrataRuntime

/// How a SCSI command's outcome becomes an I/O status, as QEMU's iscsi_translate_sense, and which
/// outcomes are tried again (a unit attention at once; a busy target after a back-off).
enum IscsiStatusMapping {
    enum Verdict: Equatable {
        case done(IOStatus)
        case retryNow
        case retryAfter(nanoseconds: UInt64)
    }

    /// QEMU's retry schedule for BUSY and TASK SET FULL, in milliseconds.
    static let backoffMs: [UInt64] = [8, 32, 128, 512, 2048]

    static func verdict(_ completion: IscsiCompletion, attempt: Int) -> Verdict {
        let status = completion.status
        if status == SCSI_STATUS_GOOD { return .done(.ok) }
        let canRetry = attempt < backoffMs.count
        if status == SCSI_STATUS_BUSY || status == SCSI_STATUS_TASK_SET_FULL {
            return canRetry ? .retryAfter(nanoseconds: backoffMs[attempt] * 1_000_000) : .done(IOStatus(errno: EBUSY))
        }
        if status == SCSI_STATUS_CHECK_CONDITION, completion.senseKey == SCSI_SENSE_UNIT_ATTENTION, canRetry {
            return .retryNow
        }
        return .done(IOStatus(errno: errno(completion)))
    }

    static func errno(_ completion: IscsiCompletion) -> Int32 {
        switch completion.status {
        case SCSI_STATUS_GOOD: return 0
        case SCSI_STATUS_TIMEOUT: return ETIMEDOUT
        case SCSI_STATUS_CANCELLED: return ECANCELED
        case SCSI_STATUS_BUSY, SCSI_STATUS_TASK_SET_FULL: return EBUSY
        case SCSI_STATUS_CHECK_CONDITION:
            switch completion.senseKey {
            case SCSI_SENSE_NOT_READY?: return EBUSY
            case SCSI_SENSE_DATA_PROTECTION?: return EACCES
            case SCSI_SENSE_COMMAND_ABORTED?: return ECANCELED
            case SCSI_SENSE_ILLEGAL_REQUEST?:
                switch completion.ascq {
                case 0x2000, 0x2400, 0x2600, 0x1a00: return EINVAL
                case 0x2100: return EINVAL
                case 0x2700: return EACCES
                default: return EIO
                }
            default: return EIO
            }
        default: return EIO
        }
    }

    /// The outcome in words: the sense key and additional sense code where the target gave them.
    static func describe(_ completion: IscsiCompletion) -> String {
        if completion.status == SCSI_STATUS_CHECK_CONDITION, let key = completion.senseKey {
            let keyText = String(cString: scsi_sense_key_str(Int32(key.rawValue)))
            let ascqText = String(cString: scsi_sense_ascq_str(completion.ascq))
            return "\(keyText) (\(ascqText))"
        }
        switch completion.status {
        case SCSI_STATUS_TIMEOUT: return "timed out"
        case SCSI_STATUS_CANCELLED: return "cancelled"
        case SCSI_STATUS_ERROR: return "no answer from the target"
        default: return "SCSI status 0x\(String(completion.status.rawValue, radix: 16))"
        }
    }
}
