import Foundation
import StrataFilters
import StrataGraph
import StrataNodes
import StrataRuntime
import Testing

/// blkverify as QEMU's: requests reach a qcow2 image under test and a raw reference alike, reads
/// are compared, and a reference that differs fails the read instead of returning wrong data.
@Suite(.serialized) struct BlkverifyTests {
    private static let fileLink = ChildLink(role: .file, optionKey: "file", nodeName: "proto")
    private static let testLink = ChildLink(role: .filtered, optionKey: "test", nodeName: "fmt")
    private static let rawLink = ChildLink(role: .data, optionKey: "raw", nodeName: "ref")

    /// blkverify over qcow2 (over a file) and a raw file of the same size.
    private func open(_ harness: NodeTestHarness, qcow2 image: String, raw reference: String) async throws -> any BlockNode {
        let file = try await harness.open(FileNode.descriptor, name: "proto", options: ["filename": .string(image)])
        let qcow2 = try await harness.open(Qcow2Node.descriptor, name: "fmt", options: ["file": "proto", "backing": .null],
                                           children: [Self.fileLink: file])
        let raw = try await harness.open(FileNode.descriptor, name: "ref", options: ["filename": .string(reference)])
        let verify = try await harness.open(BlkverifyFilter.descriptor, name: "verify", options: ["test": "fmt", "raw": "ref"],
                                            children: [Self.testLink: qcow2, Self.rawLink: raw])
        let qcow2Node = harness.instance(qcow2, children: [Self.fileLink: harness.instance(file)])
        return harness.instance(verify, children: [Self.testLink: qcow2Node, Self.rawLink: harness.instance(raw)])
    }

    @Test func writesReachBothAndADivergentReferenceFailsTheRead() async throws {
        let harness = try NodeTestHarness("blkverify")
        defer { harness.shutdown() }
        let image = harness.path("test.qcow2")
        _ = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "4M"])
        let reference = try harness.createFile("raw.img", size: 4 << 20)
        let node = try await open(harness, qcow2: image, raw: reference)
        let data = TestBuffer(count: 128 << 10, filledWith: 0x5a)
        #expect(await harness.write(node, data, at: 64 << 10) == .ok)
        #expect(await harness.flush(node) == .ok)
        let back = TestBuffer(count: 256 << 10)
        #expect(await harness.read(node, back, at: 0) == .ok, "both children hold the same data")
        #expect(back.allEqual(0, to: 64 << 10) && back.allEqual(0x5a, from: 64 << 10, to: 192 << 10))
        let compare = try await QemuTool.run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", image, reference])
        #expect(compare.status == 0, "\(compare.output)")

        // The reference changes behind blkverify's back: a read covering the change fails.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: reference))
        try handle.seek(toOffset: 100_000)
        try handle.write(contentsOf: Data([0x77]))
        try handle.close()
        #expect(await harness.read(node, TestBuffer(count: 64 << 10), at: 64 << 10) == .ioError, "a mismatch fails the read")
        #expect(await harness.read(node, TestBuffer(count: 64 << 10), at: 1 << 20) == .ok, "reads elsewhere still agree")
        #expect(await harness.submit(node, BlockRequest(operation: .discard, offsetBytes: 0, lengthBytes: 4096)) == IOStatus(errno: ENOTSUP))
    }

    @Test func childrenOfDifferentSizesAreRefused() async throws {
        let harness = try NodeTestHarness("blkverify-size")
        defer { harness.shutdown() }
        let small = try harness.createFile("small.img", size: 1 << 20)
        let large = try harness.createFile("large.img", size: 2 << 20)
        let test = try await harness.open(FileNode.descriptor, name: "fmt", options: ["filename": .string(small)])
        let raw = try await harness.open(FileNode.descriptor, name: "ref", options: ["filename": .string(large)])
        let error = await harness.openError(BlkverifyFilter.descriptor, options: ["test": "fmt", "raw": "ref"],
                                            children: [Self.testLink: test, Self.rawLink: raw])
        #expect(error?.contains("differ in size") == true, "\(error ?? "opened")")
    }

    /// qemu-io's `blkverify:RAW:TEST` filename: the same output through both tools, and the write
    /// reaches both images; a malformed name is refused naming the syntax.
    @Test func theFilenameWorksAsInQemuIo() async throws {
        let harness = try NodeTestHarness("blkverify-filename")
        defer { harness.shutdown() }
        var outputs: [String] = []
        for tool in ["qemu-io", "strata"] {
            let test = harness.path("\(tool).qcow2")
            let reference = harness.path("\(tool).raw")
            _ = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", test, "1M"])
            _ = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "raw", reference, "1M"])
            let commands = ["-c", "write -P 7 4k 8k", "-c", "read -P 7 4k 8k", "-c", "read -P 0 0 4k", "blkverify:\(reference):\(test)"]
            let result = tool == "strata" ? try await QemuTool.run(CommandLineTests.binary, ["io"] + commands) : try await QemuTool.run("qemu-io", commands)
            #expect(result.status == 0, "\(tool): \(result.output)")
            outputs.append(result.output.replacingOccurrences(of: test, with: "TEST").replacingOccurrences(of: reference, with: "RAW")
                .replacingOccurrences(of: #"\([^)]*sec\)"#, with: "(RATE)", options: .regularExpression))
            let raw = try await QemuTool.run("qemu-io", ["-r", "-f", "raw", "-c", "read -P 7 4k 8k", reference])
            let qcow2 = try await QemuTool.run("qemu-io", ["-r", "-c", "read -P 7 4k 8k", test])
            #expect(!raw.output.contains("failed") && !qcow2.output.contains("failed"), "\(tool): \(raw.output) \(qcow2.output)")
        }
        #expect(outputs[0] == outputs[1], "qemu-io:\n\(outputs[0])\nstrata io:\n\(outputs[1])")
        let malformed = try await QemuTool.run(CommandLineTests.binary, ["io", "-c", "read 0 4k", "blkverify:only-one"])
        #expect(malformed.status != 0 && malformed.output.contains("a blkverify filename is blkverify:RAW:TEST"), "\(malformed.output)")
    }
}
