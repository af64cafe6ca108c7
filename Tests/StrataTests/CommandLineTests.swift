import Foundation
import Testing

/// The `strata` command as a user runs it: hostile flags and options get a clear error naming
/// what is wrong and a non-zero exit, never a crash; a good run prints the table or the JSON.
@Suite struct CommandLineTests {
    /// The debug binary `swift build --build-tests` made next to the test bundle.
    static let binary: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/strata").path
    }()

    struct Outcome {
        let status: Int32
        let output: String
    }

    func strata(_ arguments: [String]) async throws -> Outcome {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build the strata product first (swift build --build-tests)")
        let result = try await QemuTool.run(Self.binary, arguments)
        return Outcome(status: result.status, output: result.output)
    }

    func expectRefused(_ arguments: [String], saying message: String) async throws {
        let outcome = try await strata(arguments)
        #expect(outcome.status != 0, "strata \(arguments) should fail")
        #expect(outcome.status < 128, "strata \(arguments) crashed: \(outcome.output)")
        #expect(outcome.output.contains(message), "expected '\(message)' in: \(outcome.output)")
    }

    @Test func unknownDriverIsNamed() async throws {
        try await expectRefused(["bench", "--ops", "10", "--blockdev", #"{"driver":"nosuch","node-name":"x"}"#], saying: "Unknown driver 'nosuch'")
    }

    @Test func missingChildIsNamed() async throws {
        try await expectRefused(["bench", "--ops", "10", "--blockdev", #"{"driver":"raw","node-name":"r","file":"ghost"}"#],
                                saying: "r: child 'ghost' for role 'file' does not exist")
    }

    @Test func badSizesAreNamed() async throws {
        try await expectRefused(["bench", "--ops", "10", "--blockdev", #"{"driver":"null-co","node-name":"n","size":-1}"#],
                                saying: "n: Parameter 'size'")
        try await expectRefused(["bench", "--ops", "10", "--bs", "1000"], saying: "--bs must be a multiple of 512")
        try await expectRefused(["bench", "--ops", "10", "--size", "lots"], saying: "null0: Parameter 'size' expects a number, got 'lots'")
        try await expectRefused(["bench", "--ops", "10", "--depth", "0"], saying: "--depth must be between 1 and 4096")
        try await expectRefused(["bench", "--ops", "10", "--submit-batch", "0"], saying: "--submit-batch must be between 1 and 512")
        try await expectRefused(["bench", "--ops", "10", "--poll-max-ns", "2000000000"], saying: "--poll-max-ns must be 0-1000000000, got 2000000000")
        try await expectRefused(["serve", "--image", "x", "--nbd", "unix:/tmp/x", "--poll-max-ns", "-1"], saying: "--poll-max-ns")
        try await expectRefused(["bench", "--ops", "10", "--numa", "4096"], saying: "--numa 4096: this machine has NUMA node")
        try await expectRefused(["bench", "--ops", "10", "--numa", "0", "--cpus", "0"], saying: "give --cpus or --numa, not both")
    }

    @Test func negativeLimitsAreNamed() async throws {
        try await expectRefused(["bench", "--ops", "10",
                                 "--blockdev", #"{"driver":"null-co","node-name":"n"}"#,
                                 "--blockdev", #"{"driver":"throttle","node-name":"t","file":"n","limits":{"iops-total":-5}}"#],
                                saying: "t: Parameter 'limits.iops-total' must be between 0 and 1000000000000000, got -5")
    }

    @Test func badJSONAndEditsAreNamed() async throws {
        try await expectRefused(["bench", "--ops", "10", "--blockdev", "{oops"], saying: "invalid JSON")
        try await expectRefused(["bench", "--ops", "10", "--edit-at", "soon:{}"], saying: "--edit-at expects SECONDS:JSON")
        try await expectRefused(["bench", "--ops", "10", "--edit-at", #"1:{"type":"explode","data":{}}"#], saying: "unknown action type 'explode'")
        try await expectRefused(["bench", "--ops", "10", "--rw", "sideways"], saying: "--rw must be one of")
        try await expectRefused(["bench", "--ops", "10", "--image", "/nonexistent/disk.img"], saying: "/nonexistent/disk.img")
    }

    /// Node 0 exists everywhere: its CPUs take the queues.
    @Test func queuesGoOnANUMANodesCPUs() async throws {
        let outcome = try await strata(["bench", "--ops", "200", "--queues", "2", "--numa", "0", "--json"])
        #expect(outcome.status == 0, "\(outcome.output)")
    }

    @Test func aGoodRunPrintsTheRequiredJSON() async throws {
        let outcome = try await strata(["bench", "--ops", "2000", "--queues", "2", "--depth", "8", "--json"])
        #expect(outcome.status == 0, "\(outcome.output)")
        let object = try JSONSerialization.jsonObject(with: Data(outcome.output.utf8)) as? [String: Any]
        for key in ["ops", "failed", "seconds", "iops", "cpu_ns_per_op", "latency_ns", "queues", "edits"] {
            #expect(object?[key] != nil, "missing \(key)")
        }
        #expect(object?["ops"] as? Int == 4000)
        let latency = object?["latency_ns"] as? [String: Any]
        for key in ["p50", "p99", "p999", "max"] { #expect(latency?[key] != nil, "missing latency_ns.\(key)") }
        #expect((object?["queues"] as? [Any])?.count == 2)
    }
}
