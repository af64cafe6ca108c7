import Glibc
import StrataRuntime

/// What a job does when one of its reads or writes fails (QEMU's BlockdevOnError): the
/// `on-error`, `on-source-error` and `on-target-error` arguments.
public enum JobErrorPolicy: String, Sendable {
    /// The job fails.
    case report
    /// The failure is forgotten and the job goes on (what failed is retried later where the
    /// job can: a mirror's chunk stays dirty).
    case ignore
    /// The job pauses (BLOCK_JOB_ERROR, `io-status` failed or nospace) until job-resume, then
    /// retries what failed.
    case stop
    /// stop on ENOSPC, report otherwise.
    case enospc
    /// As enospc (QEMU's default for some devices; jobs take it too).
    case auto

    /// QEMU's block_job_error_action.
    public func action(for status: IOStatus) -> JobErrorAction {
        switch self {
        case .report: .report
        case .ignore: .ignore
        case .stop: .stop
        case .enospc, .auto: status.errno == ENOSPC ? .stop : .report
        }
    }
}

/// What the job does about one failure, as BLOCK_JOB_ERROR's `action` says it.
public enum JobErrorAction: String, Sendable {
    case report
    case ignore
    case stop
}
