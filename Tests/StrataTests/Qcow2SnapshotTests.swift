import Foundation
import Testing

/// `strata img snapshot` creates, applies and deletes internal snapshots that qemu-img reads,
/// and works on snapshots qemu-img made: after every step `qemu-img check` finds nothing and the
/// contents equal what `qemu-img convert` saved when the snapshot was taken.
@Suite(.serialized) struct Qcow2SnapshotTests {
    private func run(_ tool: String, _ arguments: [String]) async throws -> QemuTool.Result {
        tool == "strata" ? try await QemuTool.run(CommandLineTests.binary, arguments) : try await QemuTool.run(tool, arguments)
    }

    private func require(_ tool: String, _ arguments: [String]) async throws {
        let result = try await run(tool, arguments)
        try #require(result.status == 0, "\(tool) \(arguments.joined(separator: " ")): \(result.output)")
    }

    private func expectClean(_ image: String, _ label: String) async throws {
        let check = try await run("qemu-img", ["check", image])
        #expect(check.status == 0 && check.output.contains("No errors were found"), "\(label): \(check.output)")
    }

    /// The guest contents now, as a raw file.
    private func save(_ image: String, to raw: String) async throws {
        try await require("qemu-img", ["convert", "-O", "raw", image, raw])
    }

    private func expectContents(_ image: String, _ raw: String, _ label: String) async throws {
        let compare = try await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, image])
        #expect(compare.status == 0, "\(label): \(compare.output)")
    }

    @Test(arguments: ["1.1", "0.10"])
    func snapshotsRoundTripWithQemu(compat: String) async throws {
        let harness = try NodeTestHarness("qcow2snap")
        defer { harness.shutdown() }
        let image = harness.path("snap.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=\(compat)", image, "16M"])
        try await require("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 3M", "-c", "write -P 7 8M 100k", image])
        if compat == "1.1" { try await require("qemu-io", ["-f", "qcow2", "-c", "write -z 12M 256k", image]) }
        try await save(image, to: harness.path("a.raw"))
        try await require("strata", ["img", "snapshot", "-c", "alpha", image])
        try await expectClean(image, "after create")

        try await require("strata", ["io", "-c", "write -P 2 1M 2M", "-c", "write -z 8M 64k", "-c", "discard 0 64k", image])
        try await expectClean(image, "after writes over a snapshot")
        try await save(image, to: harness.path("b.raw"))
        // qemu-img takes the second one; Strata lists both as qemu-img does.
        try await require("qemu-img", ["snapshot", "-c", "beta", image])
        let ours = try await run("strata", ["img", "snapshot", "-l", image])
        let theirs = try await run("qemu-img", ["snapshot", "-l", image])
        let tags = { (text: String) in text.split(separator: "\n").dropFirst(2).map { $0.split(separator: " ").prefix(2).joined(separator: " ") } }
        #expect(tags(ours.output) == tags(theirs.output) && tags(ours.output).count == 2, "\(ours.output)\n\(theirs.output)")

        try await require("strata", ["io", "-c", "write -P 3 0 4M", image])
        try await require("strata", ["img", "snapshot", "-a", "alpha", image])
        try await expectClean(image, "after applying alpha")
        try await expectContents(image, harness.path("a.raw"), "alpha applied")
        try await require("strata", ["img", "snapshot", "-a", "2", image])
        try await expectContents(image, harness.path("b.raw"), "beta applied by ID")
        try await require("strata", ["img", "snapshot", "-d", "alpha", image])
        try await expectClean(image, "after deleting alpha")
        try await expectContents(image, harness.path("b.raw"), "deleting keeps the active image")
        try await require("qemu-img", ["snapshot", "-d", "beta", image])
        try await expectClean(image, "after qemu-img deleted beta")
        // With no snapshot left every cluster is the image's own again: writes go in place.
        try await require("strata", ["io", "-c", "write -P 4 0 64k", image])
        try await expectClean(image, "after a write with no snapshots")
        let missing = try await run("strata", ["img", "snapshot", "-d", "nope", image])
        #expect(missing.status == 1 && missing.output.contains("Can't find the snapshot"), "\(missing.output)")
    }
}
