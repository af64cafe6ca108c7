/// QEMU's JobStatus, in its order (qapi/job.json).
public enum JobStatus: String, Sendable, CaseIterable {
    case undefined
    case created
    case running
    case paused
    case ready
    case standby
    case waiting
    case pending
    case aborting
    case concluded
    case null
}

/// QEMU's JobVerb: what a client may ask of a job.
public enum JobVerb: String, Sendable, CaseIterable {
    case cancel
    case pause
    case resume
    case setSpeed = "set-speed"
    case complete
    case finalize
    case dismiss
}

/// QEMU's JobType, for the jobs Strata has.
public enum JobType: String, Sendable {
    case commit
    case stream
    case mirror
    case backup
    case create
}
