import StrataFormatting

/// An event a job sends (JOB_STATUS_CHANGE, BLOCK_JOB_*), as name and data; the monitor stamps
/// and delivers it.
public struct JobEvent: Sendable {
    public let name: String
    public let data: OrderedJSON

    init(_ name: String, _ fields: [(String, OrderedJSON)]) {
        self.name = name
        data = QDictOrder.object(fields)
    }
}

/// What query-jobs and query-block-jobs show of a job at one moment.
public struct JobSnapshot: Sendable {
    public let id: String
    public let type: JobType
    public let status: JobStatus
    public let currentProgress: UInt64
    public let totalProgress: UInt64
    public let speed: UInt64
    public let error: String?
    public let isBlockJob: Bool
    public let isPaused: Bool
    public let isBusy: Bool
    public let isReady: Bool
    public let autoFinalize: Bool
    public let autoDismiss: Bool
    /// "ok", "failed" or "nospace" (query-block-jobs `io-status`).
    public let ioStatus: String
}
