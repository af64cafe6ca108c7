import Glibc
import Histogram
import StrataDevices
import StrataGraph
import StrataRuntime

/// A transaction to apply at a point of the run (`--edit-at SECONDS:JSON`).
public struct TimedEdit: Sendable {
    public let atSeconds: Double
    public let transaction: JSONValue

    public init(atSeconds: Double, transaction: JSONValue) {
        self.atSeconds = atSeconds
        self.transaction = transaction
    }
}

/// How long a run lasts: a request count per queue, or a duration.
public enum RunLength: Sendable {
    case opsPerQueue(Int)
    case seconds(Double)
}

/// Drives the built-in guest load on every queue of a graph controller's backend: one virtio-blk
/// device queue and one guest driver per queue executor, started together; edits are applied
/// from the control side while the queues run.
public enum LoadRun {
    /// How long a timed run goes on after an edit applied past its planned end.
    static let requestsAfterEditNs: UInt64 = 50_000_000

    public static func run(controller: GraphController, backend: String, spec: WorkloadSpec, length: RunLength,
                           edits: [TimedEdit] = []) async throws -> LoadReport {
        let queues = controller.queues
        let capacity = try await controller.backendSizeBytes(backend)
        guard capacity >= UInt64(spec.blockSizeBytes) else {
            throw GraphError.badEdit("backend '\(backend)' is \(capacity) bytes, smaller than one \(spec.blockSizeBytes)-byte block")
        }
        var drivers: [GuestDriverQueue] = []
        var devices: [VirtioBlkDevice] = []
        for queue in queues {
            let driver = try GuestDriverQueue(queue: queue, backendName: backend, spec: spec, capacityBytes: capacity, queueCount: queues.count)
            try await controller.attach(driver.device)
            devices.append(driver.device)
            drivers.append(driver)
        }
        defer { Task { [controller, devices] in for device in devices { await controller.detach(device) } } }

        let clock = MonotonicClock()
        let cpuStart = processCPUTimeNs()
        let startNs = clock.nowNs
        CycleClock.calibrate()
        // The guest's deadline is on its own (cycle) clock.
        let plannedCycleEndNs: UInt64? = if case .seconds(let seconds) = length { CycleClock.now() + UInt64(seconds * 1e9) } else { nil }
        let plannedEndNs: UInt64? = if case .seconds(let seconds) = length { startNs + UInt64(seconds * 1e9) } else { nil }
        let deadline = plannedCycleEndNs.map { RunDeadline(ns: $0) }
        let opsLimit: Int? = if case .opsPerQueue(let ops) = length { ops } else { nil }
        let crossingsBefore = queues.map { $0.executor.crossThreadEnqueues }

        async let queueResults = withTaskGroup(of: GuestQueueResult.self) { group in
            for driver in drivers {
                group.addTask(executorPreference: ThreadAffineExecutors.preference(for: driver.queue.executor)) { await driver.run(on: driver.device, opsLimit: opsLimit, deadline: deadline) }
            }
            var results: [GuestQueueResult] = []
            for await result in group { results.append(result) }
            return results.sorted { $0.queueIndex < $1.queueIndex }
        }
        var applied: [(TimedEdit, TransactionReport?, String?)] = []
        for edit in edits.sorted(by: { $0.atSeconds < $1.atSeconds }) {
            await clock.sleep(untilNs: startNs + UInt64(edit.atSeconds * 1e9))
            // An edit due within a timed run is applied while the queues run, however late the
            // control thread gets to it: the run is held open while it applies (10 s at most)
            // and goes on for a while after its switch if the planned end has passed by then.
            let holdsRun = deadline != nil && plannedEndNs.map { startNs + UInt64(edit.atSeconds * 1e9) < $0 } == true
            if holdsRun, let deadline { deadline.set(ns: CycleClock.now() + 10_000_000_000) }
            do {
                applied.append((edit, try await controller.apply(json: edit.transaction), nil))
            } catch {
                applied.append((edit, nil, "\(error)"))
            }
            if holdsRun, let deadline, let plannedCycleEndNs {
                deadline.set(ns: max(plannedCycleEndNs, CycleClock.now() + requestsAfterEditNs))
            }
        }
        let results = await queueResults
        let endNs = clock.nowNs
        let cpuNs = processCPUTimeNs() - cpuStart
        await controller.waitForRetirements()

        return makeReport(results: results, applied: applied, spec: spec, seconds: Double(endNs - startNs) / 1e9, cpuNs: cpuNs,
                          graph: await controller.describe(), crossings: zip(queues, crossingsBefore).map { $0.executor.crossThreadEnqueues - $1 })
    }

    static func makeReport(results: [GuestQueueResult], applied: [(TimedEdit, TransactionReport?, String?)], spec: WorkloadSpec,
                                   seconds: Double, cpuNs: UInt64, graph: [String], crossings: [Int]) -> LoadReport {
        var merged = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var queueReports: [QueueReport] = []
        for (index, result) in results.enumerated() {
            merged.add(result.histogram)
            queueReports.append(QueueReport(queue: result.queueIndex, ops: result.ops, reads: result.reads, writes: result.writes,
                                            failed: result.failed, lost: result.lost, verifyFailures: result.verifyFailures, bytes: result.bytes,
                                            iops: Double(result.ops) / seconds, latencyNs: LatencySummary(result.histogram),
                                            crossThreadEnqueues: crossings[index]))
        }
        let ops = results.reduce(0) { $0 + $1.ops }
        let bytes = results.reduce(UInt64(0)) { $0 + $1.bytes }
        let editReports = applied.map { edit, report, error -> EditReport in
            var worst: UInt64 = 0
            var across = 0
            if let report {
                for result in results {
                    if let observed = result.acrossSwitch[report.version] {
                        worst = max(worst, observed.maxLatencyNs)
                        across += observed.count
                    }
                }
            }
            return EditReport(atSeconds: edit.atSeconds, transaction: edit.transaction.description, version: report?.version ?? 0,
                              applyNs: report?.applyNs ?? 0, maxInFlightLatencyNs: worst, requestsInFlightAcross: across, error: error)
        }
        return LoadReport(graph: graph, mode: spec.mode.rawValue, blockSizeBytes: spec.blockSizeBytes, queueDepth: spec.queueDepth,
                          queueCount: results.count, seed: spec.seed, ops: ops, failed: results.reduce(0) { $0 + $1.failed },
                          lost: results.reduce(0) { $0 + $1.lost },
                          verifyFailures: results.reduce(0) { $0 + $1.verifyFailures }, seconds: seconds,
                          iops: Double(ops) / seconds, bandwidthMiBps: Double(bytes) / seconds / 1_048_576,
                          cpuNsPerOp: ops == 0 ? 0 : Double(cpuNs) / Double(ops), latencyNs: LatencySummary(merged),
                          queues: queueReports, edits: editReports)
    }

    /// User plus system CPU time of the whole process.
    public static func processCPUTimeNs() -> UInt64 {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func ns(_ time: timeval) -> UInt64 { UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_usec) * 1000 }
        return ns(usage.ru_utime) + ns(usage.ru_stime)
    }
}
