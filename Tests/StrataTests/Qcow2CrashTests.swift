import Foundation
import Glibc
import Testing

/// A writer killed with SIGKILL in the middle of allocating writes leaves an image qemu-img
/// finds free of corruption (leaks allowed), in which every write acknowledged before a
/// completed flush reads back. The writer is `strata io` in batch mode: each command prints a
/// line when it completes, so its output says how far it got.
@Suite(.serialized) struct Qcow2CrashTests {
    private struct Write {
        let offset: Int
        let length: Int
        let pattern: Int
    }

    /// Writes at distinct 16 KiB slots of a 64 MiB image, in a seeded order, each of 1-12 KiB so
    /// that some cross cluster boundaries (4 KiB clusters) and all allocate; a flush after every 8.
    private func plan(seed: UInt64) -> [Write] {
        var state = seed
        func next() -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int(truncatingIfNeeded: state >> 33)
        }
        var slots = Array(0..<4096)
        for index in stride(from: slots.count - 1, to: 0, by: -1) { slots.swapAt(index, next() % (index + 1)) }
        return (0..<600).map { index in
            Write(offset: slots[index] * 16384 + (next() % 4) * 512, length: 1024 * (1 + next() % 12), pattern: 1 + index % 250)
        }
    }

    /// The rounds' kill delays come from this seed, printed with every failure:
    /// `STRATA_CRASH_SEED=N` replays a run's delays (where the writer then is still depends on timing).
    private static let delaySeed: UInt64 = {
        let seed = ProcessInfo.processInfo.environment["STRATA_CRASH_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
        print("Qcow2CrashTests: kill delays from seed \(seed) (STRATA_CRASH_SEED=\(seed) replays them)")
        return seed
    }()

    /// The delay before round `round`'s writer is killed: from just after start-up to well past
    /// the end of a typical run.
    private static func killDelayMs(round: Int) -> Int {
        var state = delaySeed &+ UInt64(round) &* 0x9E37_79B9_7F4A_7C15
        state = (state ^ (state >> 30)) &* 0xBF58_476D_1CE4_E5B9
        state = (state ^ (state >> 27)) &* 0x94D0_49BB_1331_11EB
        return 20 + Int((state ^ (state >> 31)) % 300)
    }

    /// Rounds killed at random times; most must die mid-run, or the test proves nothing.
    @Test func killedWritersLeaveConsistentImages() async throws {
        var interrupted = 0
        for round in 0..<12 where try await killWriter(round: round) { interrupted += 1 }
        #expect(interrupted >= 6, "only \(interrupted) of 12 writers were killed before they finished")
    }

    /// One round; returns whether the writer was killed before it finished.
    private func killWriter(round: Int) async throws -> Bool {
        let harness = try NodeTestHarness("qcow2crash")
        defer { harness.shutdown() }
        let image = harness.path("crash.qcow2")
        let created = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", image, "64M"])
        try #require(created.status == 0, "\(created.output)")
        let writes = plan(seed: UInt64(round) &+ 1000)
        var arguments = ["io", "-f", "qcow2"]
        for (index, write) in writes.enumerated() {
            arguments += ["-c", "write -P \(write.pattern) \(write.offset) \(write.length)"]
            if index % 8 == 7 { arguments += ["-c", "flush"] }
        }
        arguments.append(image)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let delayMs = Self.killDelayMs(round: round)
        try await Task.sleep(nanoseconds: UInt64(delayMs) * 1_000_000)
        kill(process.processIdentifier, SIGKILL)
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let completed = output.split(separator: "\n").filter { $0.hasPrefix("wrote ") }.count
        // The flush after write 8(k+1) completed when a later write printed, or the run ended.
        let finished = process.terminationReason == .exit
        let durable = finished ? writes.count : completed > 0 ? (completed - 1) / 8 * 8 : 0

        let check = try await QemuTool.runOnceUnlocked("qemu-img", ["check", "--output=json", image])
        #expect(check.status == 0 || check.status == 3, "round \(round) (STRATA_CRASH_SEED=\(Self.delaySeed)), killed after \(delayMs) ms, \(completed) writes: \(check.output)")
        #expect(check.output.contains("\"corruptions\": 0") || !check.output.contains("\"corruptions\""), "seed \(Self.delaySeed): \(check.output)")
        #expect(!check.output.contains("\"check-errors\": ") || check.output.contains("\"check-errors\": 0"), "\(check.output)")

        guard durable > 0 else { return !finished }
        var reads: [String] = []
        for write in writes.prefix(durable) { reads += ["-c", "read -P \(write.pattern) \(write.offset) \(write.length)"] }
        let verify = try await QemuTool.run("qemu-io", ["-f", "qcow2"] + reads + [image])
        #expect(verify.status == 0 && !verify.output.contains("Pattern verification failed"),
                "round \(round) (STRATA_CRASH_SEED=\(Self.delaySeed)): \(durable) flushed writes of \(completed) completed: \(verify.output.prefix(2000))")
        return !finished
    }
}
