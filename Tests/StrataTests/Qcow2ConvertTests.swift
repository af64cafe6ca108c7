import Foundation
import Testing

/// `strata img convert` to qcow2: plain, compressed (zlib and zstd), with creation options and a
/// backing file, from raw and from a qcow2 chain. qemu-img check must find nothing and qemu-img
/// compare must find the source's contents.
@Suite(.serialized) struct Qcow2ConvertTests {
    private func run(_ tool: String, _ arguments: [String]) async throws -> QemuTool.Result {
        tool == "strata" ? try await QemuTool.run(CommandLineTests.binary, arguments) : try await QemuTool.run(tool, arguments)
    }

    private func require(_ tool: String, _ arguments: [String]) async throws -> QemuTool.Result {
        let result = try await run(tool, arguments)
        try #require(result.status == 0, "\(tool) \(arguments.joined(separator: " ")): \(result.output)")
        return result
    }

    private func expectGood(_ image: String, equalTo source: String, _ label: String) async throws {
        let check = try await run("qemu-img", ["check", image])
        #expect(check.status == 0 && check.output.contains("No errors were found"), "\(label): \(check.output)")
        let compare = try await run("qemu-img", ["compare", source, image])
        #expect(compare.status == 0, "\(label): \(compare.output)")
    }

    @Test(arguments: [
        ["-O", "qcow2"],
        ["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=8"],
        ["-O", "qcow2", "-o", "compat=0.10"],
        ["-c", "-O", "qcow2"],
        ["-c", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=16k"],
        ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"],
        ["-W", "-m", "4", "-O", "qcow2"],
    ])
    func convertsRawToQcow2(options: [String]) async throws {
        let harness = try NodeTestHarness("qcow2conv")
        defer { harness.shutdown() }
        let source = harness.path("source.raw")
        // Random data, text, zeros and a hole: compressible and incompressible clusters both.
        var bytes = [UInt8](repeating: 0, count: 6 << 20)
        var state: UInt64 = 42
        for index in 0..<(2 << 20) {
            state = state &* 6_364_136_223_846_793_005 &+ 1
            bytes[index] = UInt8(truncatingIfNeeded: state >> 56)
        }
        for index in (2 << 20)..<(4 << 20) { bytes[index] = UInt8(ascii: "a") + UInt8(index % 26) }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        let target = harness.path("target.qcow2")
        _ = try await require("strata", ["img", "convert"] + options + [source, target])
        try await expectGood(target, equalTo: source, options.joined(separator: " "))
        if options.contains("-c") {
            let map = try await require("qemu-img", ["map", "--output=json", target])
            // Compressed clusters are data without an offset in qemu-img map.
            #expect(map.output.contains("\"data\": true}"), "\(map.output)")
        }
    }

    @Test func convertsAChainAndWritesABackingFile() async throws {
        let harness = try NodeTestHarness("qcow2convchain")
        defer { harness.shutdown() }
        let base = harness.path("base.qcow2")
        let top = harness.path("top.qcow2")
        _ = try await require("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
        _ = try await require("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 2M", base])
        _ = try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
        _ = try await require("qemu-io", ["-f", "qcow2", "-c", "write -P 2 1M 2M", "-c", "write -z 256k 64k", top])
        let flat = harness.path("flat.qcow2")
        _ = try await require("strata", ["img", "convert", "-O", "qcow2", top, flat])
        try await expectGood(flat, equalTo: top, "chain flattened")
        let info = try await require("qemu-img", ["info", "--output=json", flat])
        #expect(!info.output.contains("backing-filename"), "\(info.output)")
        let rebased = harness.path("rebased.qcow2")
        _ = try await require("strata", ["img", "convert", "-O", "qcow2", "-B", base, "-o", "backing_fmt=qcow2", top, rebased])
        try await expectGood(rebased, equalTo: top, "with -B")
        let rebasedInfo = try await require("qemu-img", ["info", "--output=json", rebased])
        #expect(rebasedInfo.output.contains("\"backing-filename\": \"\(base)\""), "\(rebasedInfo.output)")
    }
}
