import Foundation
import Testing

/// blkdebug as QEMU's: a config file's state machine, rules armed by the events of the qcow2
/// metadata path, the same scenarios through `strata io` and `qemu-io` (the `blkdebug:CONF:IMG`
/// filename), and images qemu-img finds free of corruption after every injected failure.
@Suite(.serialized) struct BlkdebugTests {
    private static func lines(_ output: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { $0.hasPrefix("wrote ") || $0.contains("failed") && !$0.contains("flush on close") && !$0.contains("Failed to flush") }
            .map { $0.hasPrefix("wrote ") ? "ok" : "failed: " + ($0.components(separatedBy: ": ").last ?? $0) }
    }

    /// QEMU's documented example: a set-state rule moves 1 -> 2 on the first write_aio, which
    /// arms the inject-error rule of state 2 on the second: it and every request after it (the
    /// read too: the rule names no I/O type) fail with ENOSPC, as qemu-io's do.
    @Test func configFileStateMachineMatchesQemuIo() async throws {
        let harness = try NodeTestHarness("blkdebug-state")
        defer { harness.shutdown() }
        let config = harness.path("blkdebug.conf")
        try """
        # QEMU's docs/devel/testing/blkdebug.rst example, with ENOSPC
        [set-state]
        event = "write_aio"
        state = "1"
        new_state = "2"

        [inject-error]
        event = "write_aio"
        state = "2"
        errno = "28"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let commands = ["-f", "qcow2", "-c", "write -P 1 0 4k", "-c", "write -P 2 64k 4k", "-c", "read -P 1 0 4k", "-c", "write -P 3 128k 4k"]
        var outcomes: [String: [String]] = [:]
        for tool in ["qemu-io", "strata"] {
            let image = harness.path("\(tool).qcow2")
            let created = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "16M"])
            try #require(created.status == 0, "\(created.output)")
            let result = tool == "strata"
                ? try await QemuTool.run(CommandLineTests.binary, ["io"] + commands + ["blkdebug:\(config):\(image)"])
                : try await QemuTool.run("qemu-io", commands + ["blkdebug:\(config):\(image)"])
            outcomes[tool] = Self.lines(result.output)
            let check = try await QemuTool.run("qemu-img", ["check", image])
            #expect(check.status == 0 || check.status == 3, "\(tool): \(check.output)")
        }
        let enospc = "failed: No space left on device"
        #expect(outcomes["strata"] == ["ok", enospc, enospc, enospc], "\(outcomes)")
        #expect(outcomes["strata"] == outcomes["qemu-io"], "\(outcomes)")
    }

    private static func qcow2IO(_ command: String, _ image: String) async throws -> Bool {
        let result = try await QemuTool.run("qemu-io", ["-f", "qcow2", "-c", command, image])
        return result.status == 0 && !result.output.contains("Pattern verification failed") && !result.output.contains("failed")
    }

    /// QEMU's iotest 026 in miniature: an error injected at each qcow2 metadata event of
    /// allocating writes into an image with data (its L2 table and refcount block on disk, not
    /// cached; one write needing a new L2 table), once and every time, EIO and ENOSPC. The write or the flush after it fails where
    /// the event happens, the image stays free of corruption (leaks allowed), and the data written
    /// and flushed before is intact. The same rule through qemu-io must fail too.
    @Test(arguments: ["l2_load", "l2_update", "l1_update", "refblock_load", "refblock_update_part", "write_aio", "flush_to_disk"])
    func injectedMetadataErrorsLeaveConsistentImages(event: String) async throws {
        let harness = try NodeTestHarness("blkdebug-026")
        defer { harness.shutdown() }
        for once in [true, false] {
            for errno in [5, 28] {
                var failedIn: [String: Bool] = [:]
                for tool in ["qemu-io", "strata"] {
                    let image = harness.path("\(tool)-\(event)-\(once)-\(errno).qcow2")
                    let created = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", image, "64M"])
                    try #require(created.status == 0, "\(created.output)")
                    #expect(try await Self.qcow2IO("write -P 0x11 0 64k", image))
                    let config = harness.path("rule-\(tool).conf")
                    try """
                    [inject-error]
                    event = "\(event)"
                    errno = "\(errno)"
                    once = "\(once ? "on" : "off")"
                    """.write(toFile: config, atomically: true, encoding: .utf8)
                    // 4 KiB clusters: 1M is in the first L2 table (on disk, loaded now), 8M needs a new one.
                    let commands = ["-f", "qcow2", "-c", "write -P 0x22 1M 64k", "-c", "write -P 0x33 8M 64k", "-c", "flush"]
                    let result = tool == "strata"
                        ? try await QemuTool.run(CommandLineTests.binary, ["io"] + commands + ["blkdebug:\(config):\(image)"])
                        : try await QemuTool.run("qemu-io", commands + ["blkdebug:\(config):\(image)"])
                    let label = "\(tool), \(event), once=\(once), errno=\(errno)"
                    // A failed flush prints nothing in qemu-io (nor in strata io): the status tells.
                    failedIn[tool] = result.status != 0
                    let expected = errno == 5 ? "Input/output error" : "No space left on device"
                    #expect(!result.output.contains("failed") || result.output.contains(expected), "\(label): \(result.output)")
                    let check = try await QemuTool.run("qemu-img", ["check", image])
                    #expect(check.status == 0 || check.status == 3, "\(label): \(check.output)")
                    #expect(try await Self.qcow2IO("read -P 0x11 0 64k", image), "\(label): the data flushed before is gone")
                }
                #expect(failedIn["strata"] == true, "\(event), once=\(once), errno=\(errno): no command failed: the event never fired")
                #expect(failedIn["qemu-io"] == true, "\(event), once=\(once), errno=\(errno): qemu-io saw no failure either")
            }
        }
    }

    /// Rules that cannot work are refused at open, naming what is wrong: an event Strata never
    /// fires, a config file line outside any section, an unknown section, a missing file.
    @Test func badRulesAreRefusedWithTheirReason() async throws {
        let harness = try NodeTestHarness("blkdebug-bad")
        defer { harness.shutdown() }
        let image = harness.path("disk.qcow2")
        _ = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
        let cases: [(config: String, expected: String)] = [
            ("[inject-error]\nevent = \"vmstate_load\"\n", "'vmstate_load' is not fired by Strata's nodes"),
            ("event = \"read_aio\"\n", ":1: 'event = \"read_aio\"' comes before any section"),
            ("[inject-error]\nevent = \"read_aio\"\n[break]\n", ":3: unknown section '[break]'"),
            ("[set-state]\nevent = \"read_aio\"\n", "Parameter 'new_state'"),
            ("[inject-error]\nevent = \"read_aio\"\nerrno = \"many\"\n", "Parameter 'errno'"),
        ]
        for (index, item) in cases.enumerated() {
            let config = harness.path("bad\(index).conf")
            try item.config.write(toFile: config, atomically: true, encoding: .utf8)
            let result = try await QemuTool.run(CommandLineTests.binary, ["io", "-f", "qcow2", "-c", "read 0 4k", "blkdebug:\(config):\(image)"])
            #expect(result.status != 0 && result.output.contains(item.expected), "\(item.config): \(result.output)")
        }
        let missing = try await QemuTool.run(CommandLineTests.binary, ["io", "-f", "qcow2", "-c", "read 0 4k", "blkdebug:\(harness.path("none.conf")):\(image)"])
        #expect(missing.status != 0 && missing.output.contains("cannot read"), "\(missing.output)")
        let malformed = try await QemuTool.run(CommandLineTests.binary, ["io", "-f", "qcow2", "-c", "read 0 4k", "blkdebug:\(image)"])
        #expect(malformed.status != 0 && malformed.output.contains("blkdebug:CONFIG:FILENAME"), "\(malformed.output)")
    }

    /// qemu-io's breakpoints: a write held at write_aio while a second write to the same
    /// (allocated) cluster completes, then resumed, lands last; unknown events and tags are
    /// refused with QEMU's messages. The output equals qemu-io's line for line.
    @Test func breakpointsOrderRequestsAsQemuIo() async throws {
        let harness = try NodeTestHarness("blkdebug-break")
        defer { harness.shutdown() }
        let script = ["-f", "qcow2", "-c", "write -P 9 0 64k", "-c", "flush", "-c", "break write_aio A", "-c", "aio_write -P 1 0 64k",
                      "-c", "wait_break A", "-c", "write -P 2 0 64k", "-c", "resume A", "-c", "aio_flush", "-c", "read -P 1 0 64k",
                      "-c", "break bogus B", "-c", "resume Z", "-c", "remove_break A"]
        var outputs: [String: [String]] = [:]
        for tool in ["qemu-io", "strata"] {
            let image = harness.path("\(tool).qcow2")
            _ = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "16M"])
            let result = tool == "strata"
                ? try await QemuTool.run(CommandLineTests.binary, ["io"] + script + ["blkdebug::\(image)"])
                : try await QemuTool.run("qemu-io", script + ["blkdebug::\(image)"])
            outputs[tool] = result.output.split(separator: "\n").map(String.init).filter { !$0.contains("ops/sec") }
        }
        #expect(outputs["strata"]?.contains("blkdebug: Suspended request 'A'") == true, "\(outputs)")
        #expect(outputs["strata"] == outputs["qemu-io"], "\(outputs)")
        // Without a blkdebug node there is nothing to wait for: an error, not a hang.
        let plain = harness.path("plain.qcow2")
        _ = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", plain, "1M"])
        let result = try await QemuTool.run(CommandLineTests.binary, ["io", "-c", "wait_break A", "-c", "break write_aio A", plain])
        #expect(result.output.contains("Could not wait for breakpoint A: Operation not supported")
                && result.output.contains("Could not set breakpoint: Operation not supported"), "\(result.output)")
    }
}
