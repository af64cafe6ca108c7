import Histogram

/// What one tenant got under one policy: every completed request's latency (from arrival at the
/// policy to completion by the device) and when it completed.
public struct LabTenantMeasurements: Sendable {
    public internal(set) var issued: UInt64 = 0
    public internal(set) var completed: UInt64 = 0
    public internal(set) var completedBytes: UInt64 = 0
    public internal(set) var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .three)
    /// Completions per interval of the scenario.
    public internal(set) var timeline: [UInt64]

    init(intervals: Int) { timeline = Array(repeating: 0, count: intervals) }

    mutating func complete(bytes: Int, latencyNs: UInt64, atNs: UInt64, intervalNs: UInt64) {
        completed += 1
        completedBytes += UInt64(bytes)
        _ = latency.record(max(latencyNs, 1))
        let slot = Int(atNs / intervalNs)
        if slot < timeline.count { timeline[slot] += 1 }
    }
}
