import StrataEngine
import StrataFilters
import StrataGraph
import StrataNodes
import StrataRuntime

/// A scenario on the real clock, through the real graph: a backend's queue, the policy filter
/// node (the driver `blockdev-add` makes), and below it a sim node with the service-time model or
/// a file opened with O_DIRECT. Each tenant's requests carry its index as their tag, which is how
/// the filter tells tenants apart. The policies run one after another, each on a fresh engine.
enum LabRealClockRun {
    static func run(_ scenario: LabScenario, progress: LabRunner.Progress?) async throws -> [LabPolicyResult] {
        var results: [LabPolicyResult] = []
        for (index, spec) in scenario.policies.enumerated() {
            let started = MonotonicClock.now()
            let count = scenario.policies.count
            let (measurements, requests) = try await runOne(spec, scenario: scenario) { fraction in
                progress?((0..<count).map { $0 < index ? 1 : $0 == index ? fraction : 0 })
            }
            let wall = Double(MonotonicClock.now() - started) / 1e9
            results.append(LabVerdict.summarize(policy: spec, scenario: scenario, measurements: measurements,
                                                eventsHandled: requests, wallSeconds: wall))
        }
        return results
    }

    private static func runOne(_ spec: LabPolicy, scenario: LabScenario,
                               progress: @escaping @Sendable (Double) -> Void) async throws -> ([LabTenantMeasurements], UInt64) {
        let engine = try Engine(queueCount: 1, cpus: nil)
        var device: [String: JSONValue] = ["node-name": "device"]
        switch scenario.device {
        case .sim(let service, let size):
            device["driver"] = "sim"
            device["size"] = .int(Int64(size))
            device["max-size"] = .int(Int64(size))
            device["seed"] = .int(Int64(bitPattern: scenario.seed))
            device["service-read-us"] = .int(Int64(service.readNs / 1000))
            device["service-write-us"] = .int(Int64(service.writeNs / 1000))
            device["service-distribution"] = .string(service.distribution.rawValue)
            device["service-parallelism"] = .int(Int64(service.parallelism))
            device["service-bandwidth"] = .int(Int64(service.bandwidth))
            device["slow-every-us"] = .int(Int64(service.slowEveryNs / 1000))
            device["slow-for-us"] = .int(Int64(service.slowForNs / 1000))
            device["slow-factor"] = .int(Int64(service.slowFactor))
        case .file(let path, _):
            device["driver"] = "file"
            device["filename"] = .string(path)
            device["cache"] = .object(["direct": true])
        }
        var policy = spec.options
        policy["driver"] = .string(spec.driver)
        policy["node-name"] = "policy"
        policy["file"] = "device"
        policy["max-in-flight"] = .int(Int64(spec.maxInFlight))
        let actions: [JSONValue] = [
            .object(["type": "blockdev-add", "data": .object(device)]),
            .object(["type": "blockdev-add", "data": .object(policy)]),
            .object(["type": "backend-add", "data": .object(["id": "lab", "node-name": "policy", "writable": true])]),
        ]
        let queue = engine.queues[0]
        do {
            try await engine.controller.apply(json: .array(actions))
            let port = BackendPort(backendName: "lab", queue: queue)
            try await engine.controller.attach(port)
            let driver = LabRealClockDriver(scenario: scenario, port: port, queue: queue, progress: progress)
            await ThreadAffineExecutors.startTask(serving: queue.executor) { await driver.run() }.value
            let measurements = await driver.measurements
            let requests = await driver.requests
            await engine.controller.detach(port)
            await engine.shutdown()
            return (measurements, requests)
        } catch {
            await engine.shutdown()
            throw LabScenarioError("policy '\(spec.name)': \(error)")
        }
    }
}

/// The tenants of a real-clock run, on the backend's queue executor: closed loops as `iodepth`
/// workers, open loops as a timer that starts one request per arrival.
private actor LabRealClockDriver {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let scenario: LabScenario
    private let port: BackendPort
    private let clock = MonotonicClock()
    private let progress: @Sendable (Double) -> Void
    private var streams: [LabRequestStream]
    /// Per tenant, buffers of its block size that no request holds.
    private var buffers: [[AlignedBuffer]]
    private var baseNs: UInt64 = 0
    private(set) var measurements: [LabTenantMeasurements]
    private(set) var requests: UInt64 = 0

    init(scenario: LabScenario, port: BackendPort, queue: QueueContext, progress: @escaping @Sendable (Double) -> Void) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.scenario = scenario
        self.port = port
        self.progress = progress
        streams = scenario.tenants.enumerated().map { index, tenant in
            LabRequestStream(tenant: tenant, index: index, seed: scenario.seed, deviceSizeBytes: scenario.device.sizeBytes)
        }
        let intervals = Int((scenario.durationNs + scenario.intervalNs - 1) / scenario.intervalNs)
        measurements = scenario.tenants.map { _ in LabTenantMeasurements(intervals: intervals) }
        buffers = scenario.tenants.map { _ in [] }
    }

    func run() async {
        baseNs = clock.nowNs
        await withTaskGroup(of: Void.self) { group in
            for (index, tenant) in scenario.tenants.enumerated() {
                switch tenant.arrival {
                case .closed(let depth):
                    for _ in 0..<depth { group.addTask { await self.closedLoop(tenant: index) } }
                default:
                    group.addTask { await self.openLoop(tenant: index) }
                }
            }
            group.addTask { await self.reportProgress() }
        }
    }

    private var nowNs: UInt64 { clock.nowNs - baseNs }

    private func closedLoop(tenant index: Int) async {
        let tenant = scenario.tenants[index]
        await clock.sleep(untilNs: baseNs + tenant.startNs)
        let buffer = AlignedBuffer(count: tenant.blockSize)
        while nowNs < min(tenant.stopNs, scenario.durationNs) {
            await issue(tenant: index, buffer: buffer)
        }
    }

    private func openLoop(tenant index: Int) async {
        await withTaskGroup(of: Void.self) { group in
            while let arrival = streams[index].nextArrivalNs {
                await clock.sleep(untilNs: baseNs + arrival)
                streams[index].arrived()
                let buffer = buffers[index].popLast() ?? AlignedBuffer(count: scenario.tenants[index].blockSize)
                group.addTask {
                    await self.issue(tenant: index, buffer: buffer)
                    await self.recycle(buffer, tenant: index)
                }
            }
        }
    }

    private func recycle(_ buffer: AlignedBuffer, tenant index: Int) { buffers[index].append(buffer) }

    private func issue(tenant index: Int, buffer: AlignedBuffer) async {
        let request = streams[index].nextRequest()
        measurements[index].issued += 1
        let arrival = nowNs
        let block = BlockRequest(operation: request.isWrite ? .write : .read, offsetBytes: request.offsetBytes,
                                 lengthBytes: request.bytes, buffer: buffer.slice(from: 0, count: request.bytes), tag: UInt32(index))
        _ = await port.submit(block)
        let done = nowNs
        requests += 1
        guard done <= scenario.durationNs else { return }
        measurements[index].complete(bytes: request.bytes, latencyNs: done - arrival, atNs: done, intervalNs: scenario.intervalNs)
    }

    private func reportProgress() async {
        while nowNs < scenario.durationNs {
            await clock.sleep(untilNs: clock.nowNs + 100_000_000)
            progress(min(1, Double(nowNs) / Double(scenario.durationNs)))
        }
    }
}
