import Dispatch
import StrataFilters
import StrataGraph
import StrataNodes
import StrataRuntime

/// Runs every policy of a scenario on the same streams and gathers the figures.
public enum LabRunner {
    /// How far each policy's run has come, as fractions of the scenario's time.
    public typealias Progress = @Sendable (_ fractions: [Double]) -> Void

    public static func run(_ scenario: LabScenario, progress: Progress? = nil) async throws -> LabResult {
        let policies: [LabPolicyResult]
        switch scenario.clock {
        case .virtual: policies = try runVirtual(scenario, progress: progress)
        case .real: policies = try await LabRealClockRun.run(scenario, progress: progress)
        }
        return LabResult(scenario: scenario.name, seed: scenario.seed, clock: scenario.clock,
                         durationSeconds: Double(scenario.durationNs) / 1e9, intervalSeconds: Double(scenario.intervalNs) / 1e9,
                         policies: policies)
    }

    /// Simulated time: the policies run side by side, one per core; each run depends only on the
    /// scenario, so the figures do not depend on how many run at once.
    static func runVirtual(_ scenario: LabScenario, progress: Progress?) throws -> [LabPolicyResult] {
        guard case .sim(let service, _) = scenario.device else {
            throw LabScenarioError("device: only the sim device runs on the virtual clock")
        }
        let fractions = Locked([Double](repeating: 0, count: scenario.policies.count))
        let results = Locked([Result<LabPolicyResult, Error>?](repeating: nil, count: scenario.policies.count))
        DispatchQueue.concurrentPerform(iterations: scenario.policies.count) { index in
            let spec = scenario.policies[index]
            let outcome = Result {
                try runVirtual(spec, scenario: scenario, service: service) { nowNs in
                    let snapshot = fractions.withLock { fractions in
                        fractions[index] = Double(nowNs) / Double(scenario.durationNs)
                        return fractions
                    }
                    progress?(snapshot)
                }
            }
            results.withLock { $0[index] = outcome }
        }
        return try results.withLock { $0 }.map { try $0!.get() }
    }

    static func runVirtual(_ spec: LabPolicy, scenario: LabScenario, service: ServiceTimeModel.Parameters,
                           progress: (UInt64) -> Void) throws -> LabPolicyResult {
        guard let type = SchedulingPolicyCatalog.policy(named: spec.driver) else {
            throw LabScenarioError("policy '\(spec.name)': no scheduling policy '\(spec.driver)'")
        }
        return try runVirtual(type, spec: spec, scenario: scenario, service: service, progress: progress)
    }

    private static func runVirtual<Policy: SchedulingPolicy>(_ type: Policy.Type, spec: LabPolicy, scenario: LabScenario,
                                                             service: ServiceTimeModel.Parameters,
                                                             progress: (UInt64) -> Void) throws -> LabPolicyResult {
        let policy = try makePolicy(type, spec: spec)
        let started = MonotonicClock.now()
        var simulation = LabSimulation(scenario: scenario, policy: policy, maxInFlight: spec.maxInFlight, service: service)
        simulation.run(progress: progress)
        let wall = Double(MonotonicClock.now() - started) / 1e9
        return LabVerdict.summarize(policy: spec, scenario: scenario, measurements: simulation.measurements,
                                    eventsHandled: simulation.eventsHandled, wallSeconds: wall)
    }

    static func makePolicy<Policy: SchedulingPolicy>(_ type: Policy.Type, spec: LabPolicy) throws -> Policy {
        var reader = OptionReader(nodeName: "policy '\(spec.name)'", options: spec.options)
        do {
            return try Policy.make(parsing: &reader)
        } catch {
            throw LabScenarioError(error.description)
        }
    }
}
