import ArgumentParser
import Glibc
import StrataRuntime
import StrataSimulation

/// `strata sim`: the deterministic power-cut and fault simulation. Each seed runs a guest
/// workload through device -> blkdebug -> qcow2 -> sim on one queue, cuts the power, and
/// judges the image with Strata's checker, `qemu-img check` and a read-back of every sector.
struct SimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Run the seeded power-cut and fault simulation of the graph; a failing seed replays exactly.")

    @Option(help: "The first seed.")
    var seed: UInt64 = 1
    @Option(help: "How many seeds, from --seed on.")
    var seeds = 1
    @Option(help: "Guest operations per seed (default: drawn from the seed, 64-511).")
    var ops: Int?
    @Option(help: "mixed, writes or edits.")
    var workload = "mixed"
    @Option(help: "Where each seed's image is made (removed unless it fails or --keep).")
    var dir = "/tmp"
    @Flag(help: "Keep every seed's image and backing file.")
    var keep = false
    @Option(help: "The qemu-img that judges each image.")
    var qemuImg = "qemu-img"
    @Flag(help: "Judge with Strata's checker and the read-back only, not qemu-img check.")
    var noQemuImg = false
    @Flag(help: "A disk that acknowledges flushes and keeps nothing: shows that the simulation notices lost writes.")
    var lyingDisk = false
    @Flag(help: "Print every guest request as it completes.")
    var trace = false
    @Flag(name: .customShort("q"), help: "Print failing seeds and the summary only.")
    var quiet = false
    @Option(help: "Also write the summary as JSON to this file.")
    var summaryJson: String?

    func validate() throws {
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1, got \(seeds)") }
        if let ops, !(1...1_000_000).contains(ops) { throw ValidationError("--ops must be between 1 and 1000000, got \(ops)") }
        guard SimulationMix(rawValue: workload) != nil else {
            throw ValidationError("--workload expects one of \(SimulationMix.allCases.map(\.rawValue).joined(separator: ", ")), got '\(workload)'")
        }
    }

    func run() async throws {
        Self.ensureDeterministicHashing()
        let directory = "\(dir)/strata-sim-\(getpid())"
        guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
            throw ValidationError("cannot make \(directory): \(String(cString: strerror(errno)))")
        }
        defer { if !keep { rmdir(directory) } }
        SimCrashNote.install()
        var summary = SimulationSummary()
        let startNs = MonotonicClock.now()
        for offset in 0..<seeds {
            let settings = SimulationSettings(seed: seed &+ UInt64(offset), operations: ops, mix: SimulationMix(rawValue: workload)!, lyingDisk: lyingDisk)
            SimCrashNote.running(seed: settings.seed, replay: settings.replayCommand)
            let outcome = await SimulationRun.run(settings, directory: directory, qemuImg: noQemuImg ? nil : qemuImg, keep: keep, trace: trace)
            summary.add(outcome)
            if !quiet || !outcome.passed { print(outcome.line) }
        }
        let seconds = Double(MonotonicClock.now() - startNs) / 1e9
        print(summary.text(seconds: seconds))
        if let summaryJson {
            do { try SimulationRun.writeFile(summaryJson, Array((summary.json(seconds: seconds) + "\n").utf8)) } catch {
                throw ValidationError("cannot write \(summaryJson): \(error)")
            }
        }
        if !summary.failedSeeds.isEmpty { throw ExitCode(1) }
    }

    /// Swift seeds its hashing per process, and the order a dictionary is walked in can order the
    /// image's metadata writes: a seed replays exactly only with the seed fixed, so the command
    /// restarts itself with it fixed when it is not.
    private static func ensureDeterministicHashing() {
        guard getenv("SWIFT_DETERMINISTIC_HASHING") == nil else { return }
        setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1)
        var argv: [UnsafeMutablePointer<CChar>?] = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &argv)
        StandardError.print("strata sim: could not restart with deterministic hashing: \(String(cString: strerror(errno)))")
        Glibc.exit(1)
    }
}
