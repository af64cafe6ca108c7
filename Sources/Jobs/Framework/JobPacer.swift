import StrataFilters
import StrataGraph
import StrataRuntime

/// How fast a job's own I/O goes. `speed` (block-job-set-speed) is kept with the throttle
/// filter's leaky bucket (QEMU's throttle code, a bps-total limit), and the job comes second to
/// the guest (the roadmap's block job I/O throttling, which QEMU's jobs lack): while the guest
/// used the job's node since the last look, the job keeps one copy in flight instead of many and
/// pauses between copies, so guest requests queued behind the job's find the disk free.
///
/// The guest's use is the node's completed requests (its accounting) beyond the job's own;
/// without accounting (`--accounting off`) the job cannot tell and does not yield. Used by one
/// job's `run` only.
final class JobPacer {
    /// A pause between copies while the guest is active.
    static let guestPauseNs: UInt64 = 1_000_000

    private let controller: GraphController
    private let node: String
    private var throttle: ThrottleState
    private var speed: UInt64 = 0
    private var seenOperations: UInt64?
    private var ownOperations: UInt64 = 0
    private(set) var guestActive = false

    init(controller: GraphController, node: String) {
        self.controller = controller
        self.node = node
        throttle = ThrottleState(nowNs: MonotonicClock.now())
    }

    /// Copies the job may have in flight now: `limit`, or one while the guest is active.
    func concurrency(upTo limit: Int) async -> Int {
        guestActive = await guestUsedNode()
        return guestActive ? 1 : limit
    }

    /// Charges finished copies of `bytes` that sent `operations` requests to the node, then
    /// waits as long as `speed` and the guest ask.
    func account(bytes: UInt64, operations: UInt64, speed: UInt64, control: QueueExecutor) async {
        ownOperations += operations
        let nowNs = MonotonicClock.now()
        if speed != self.speed {
            self.speed = speed
            var limits = ThrottleLimits()
            limits[.bpsTotal] = ThrottleLimits.BucketLimit(avg: speed)
            throttle.configure(speed > 0 ? limits : .unlimited, nowNs: nowNs)
        }
        var waitNs: UInt64 = 0
        if speed > 0 {
            throttle.account(isWrite: true, bytes: bytes)
            waitNs = throttle.waitNs(isWrite: true, nowNs: nowNs)
        }
        if guestActive { waitNs = max(waitNs, Self.guestPauseNs) }
        guard waitNs > 0 else { return }
        await Task(executorPreference: control) { await control.sleep(untilNs: MonotonicClock.now() + waitNs) }.value
    }

    private func guestUsedNode() async -> Bool {
        guard let stats = try? await controller.statistics(of: node) else { return false }
        let total = stats.classes.reduce(0) { $0 + $1.completed }
        defer {
            seenOperations = total
            ownOperations = 0
        }
        guard let seen = seenOperations else { return false }
        return total > seen + ownOperations
    }
}
