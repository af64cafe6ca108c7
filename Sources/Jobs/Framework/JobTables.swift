/// The job state machine as data, QEMU's JobSTT and JobVerbTable (job.c): which status may follow
/// which, and in which statuses a verb is accepted. Every transition a job makes is checked here.
public enum JobTables {
    /// status -> the statuses it may move to.
    public static let transitions: [JobStatus: Set<JobStatus>] = [
        .undefined: [.created],
        .created: [.running, .aborting, .null],
        .running: [.paused, .ready, .waiting, .aborting],
        .paused: [.running],
        .ready: [.standby, .waiting, .aborting],
        .standby: [.ready],
        .waiting: [.pending, .aborting],
        .pending: [.concluded, .aborting],
        .aborting: [.concluded],
        .concluded: [.null],
        .null: [],
    ]

    /// verb -> the statuses that accept it.
    public static let verbs: [JobVerb: Set<JobStatus>] = [
        .cancel: [.created, .running, .paused, .ready, .standby, .waiting, .pending],
        .pause: [.created, .running, .paused, .ready, .standby],
        .resume: [.created, .running, .paused, .ready, .standby],
        .setSpeed: [.created, .running, .paused, .ready, .standby],
        .complete: [.ready, .standby],
        .finalize: [.pending],
        .dismiss: [.concluded],
    ]

    public static func allows(_ from: JobStatus, _ to: JobStatus) -> Bool { transitions[from]?.contains(to) ?? false }

    public static func accepts(_ verb: JobVerb, in status: JobStatus) -> Bool { verbs[verb]?.contains(status) ?? false }
}
