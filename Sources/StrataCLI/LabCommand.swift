import ArgumentParser
import Foundation
import StrataLab
import StrataRuntime

/// `strata lab SCENARIO`: the scheduling-policy lab. Runs every policy of the scenario on the same
/// seeded request streams and prints a table per policy and tenant; `--output` also writes the
/// figures as JSON and CSV and the plots as SVG.
struct LabCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Run a multi-tenant scenario under several scheduling policies and compare them.",
        discussion: "The scenario format and examples are in examples/lab/ (README.md there).")

    @Argument(help: "The scenario file (JSON).")
    var scenario: String
    @Option(help: "Replace the scenario's seed.")
    var seed: UInt64?
    @Option(help: "Run only this policy (by its name in the scenario); repeat for several.")
    var policy: [String] = []
    @Option(help: "Write table.txt, result.json, result.csv, latency-cdf.svg and throughput.svg here.")
    var output: String?
    @Flag(help: "Print the JSON report instead of the table.")
    var json = false
    @Flag(inversion: .prefixedNo, help: "Show a progress bar on standard error (default: when it is a terminal).")
    var progress: Bool?

    func run() async throws {
        var parsed: LabScenario
        do {
            parsed = try LabScenarioParser.parse(file: scenario)
        } catch let error as LabScenarioError {
            throw ValidationError(error.description)
        }
        if let seed { parsed.seed = seed }
        if !policy.isEmpty {
            for name in policy where !parsed.policies.contains(where: { $0.name == name }) {
                throw ValidationError("--policy '\(name)': the scenario has no such policy; it has \(parsed.policies.map(\.name).joined(separator: ", "))")
            }
            parsed.policies = parsed.policies.filter { policy.contains($0.name) }
        }
        let bar = (progress ?? (isatty(2) == 1)) ? LabProgressBar(names: parsed.policies.map(\.name)) : nil
        var update: LabRunner.Progress?
        if let bar { update = { fractions in bar.update(fractions) } }
        let result: LabResult
        do {
            result = try await LabRunner.run(parsed, progress: update)
        } catch let error as LabScenarioError {
            bar?.finish()
            throw ValidationError(error.description)
        }
        bar?.finish()
        let table = LabReport.table(result)
        print(json ? LabReport.json(result) : table, terminator: "")
        fflush(nil)
        if let output {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            let files = [("table.txt", table), ("result.json", LabReport.json(result)), ("result.csv", LabReport.csv(result)),
                         ("latency-cdf.svg", LabPlots.latencyCDF(result)), ("throughput.svg", LabPlots.throughput(result))]
            for (name, text) in files {
                try text.write(toFile: "\(output)/\(name)", atomically: true, encoding: .utf8)
            }
            StandardError.print("strata lab: wrote \(files.map(\.0).joined(separator: ", ")) to \(output)")
        }
    }
}

/// One line on standard error, redrawn at most ten times a second: each policy's progress.
final class LabProgressBar: Sendable {
    private let names: [String]
    private let lastDrawNs = Locked<UInt64>(0)

    init(names: [String]) { self.names = names }

    func update(_ fractions: [Double]) {
        let now = MonotonicClock.now()
        let draw = lastDrawNs.withLock { last -> Bool in
            guard now - last >= 100_000_000 else { return false }
            last = now
            return true
        }
        guard draw else { return }
        let overall = fractions.reduce(0, +) / Double(max(1, fractions.count))
        let filled = Int(overall * 30)
        let parts = zip(names, fractions).map { "\($0) \(Int($1 * 100))%" }.joined(separator: "  ")
        let line = "\r[" + String(repeating: "#", count: filled) + String(repeating: ".", count: 30 - filled) + "] \(Int(overall * 100))%  " + parts
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}
