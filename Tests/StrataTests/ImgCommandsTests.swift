import Foundation
import StrataEngine
import StrataGraph
import StrataImageTools
import Synchronization
import Testing

/// map, compare, convert and bench through the engine types the `strata img` commands wrap,
/// with qemu-img as the oracle.
@Suite(.serialized) struct ImgCommandsTests {
    let harness: NodeTestHarness

    init() throws { harness = try NodeTestHarness("imgcmds") }

    /// A sparse raw image with data at a few places, written by qemu-io.
    func sparseImage(_ name: String, writes: [String]) async throws -> String {
        let path = try harness.createFile(name, size: 4 << 20)
        for command in writes { #expect(try await QemuTool.io(command, path)) }
        return path
    }

    @Test func mapEqualsQemuImgMapForSparseRaw() async throws {
        defer { harness.shutdown() }
        let path = try await sparseImage("disk.img", writes: ["write -P 1 0 8k", "write -P 2 64k 4k", "write -P 3 1M 128k"])
        let session = try await ImageSession.open(path, options: ImageOpenOptions(readOnly: true))
        let entries = try await ImageMap.entries(of: session)
        await session.close()
        let json = try await QemuTool.run("qemu-img", ["map", "--output=json", "-f", "raw", path])
        #expect(ImageMap.json(entries) + "\n" == json.output)
        let human = try await QemuTool.run("qemu-img", ["map", "-f", "raw", path])
        #expect(ImageMap.human(entries) + "\n" == human.output)
    }

    @Test func compareAgreesWithQemuImg() async throws {
        defer { harness.shutdown() }
        let a = try await sparseImage("a.img", writes: ["write -P 1 0 8k", "write -P 2 2M 4k"])
        let b = try await sparseImage("b.img", writes: ["write -P 1 0 8k", "write -P 2 2M 4k"])
        let c = try await sparseImage("c.img", writes: ["write -P 1 0 8k", "write -P 2 2M 4k", "write -P 9 3M 512"])
        let zeros = try await sparseImage("d.img", writes: ["write -z 0 4k"])
        for (x, y) in [(a, b), (a, c), (c, a), (a, zeros)] {
            let first = try await ImageSession.open(x, options: ImageOpenOptions(readOnly: true))
            let second = try await ImageSession.open(y, options: ImageOpenOptions(readOnly: true))
            let ours = await ImageCompare.compare(first, second, strict: false)
            await first.close()
            await second.close()
            let theirs = try await QemuTool.run("qemu-img", ["compare", "-f", "raw", "-F", "raw", x, y])
            #expect(ours.exitCode == theirs.status, "\(x) \(y): \(ours.messages) vs \(theirs.output)")
            #expect(ours.messages.joined(separator: "\n") + "\n" == theirs.output)
        }
    }

    @Test func convertCopiesRawAndQcow2Sources() async throws {
        defer { harness.shutdown() }
        let raw = try await sparseImage("src.img", writes: ["write -P 5 0 64k", "write -P 6 3M 4k"])
        let qcow2 = harness.path("src.qcow2")
        #expect(try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", qcow2, "2M"]).status == 0)
        #expect(try await QemuTool.run("qemu-io", ["-c", "write -P 7 512k 128k", qcow2]).status == 0)
        for (source, outOfOrder) in [(raw, false), (qcow2, true)] {
            let target = source + ".out"
            let sourceSession = try await ImageSession.open(source, options: ImageOpenOptions(readOnly: true))
            let zeroed = try await RawTargetCreator().create(path: target, sizeBytes: sourceSession.sizeBytes, options: [:])
            let targetSession = try await ImageSession.open(target, options: ImageOpenOptions(format: "raw", cacheMode: "unsafe"))
            var convert = ImageConvert()
            convert.targetIsZero = zeroed
            convert.outOfOrder = outOfOrder
            convert.workers = 4
            try await convert.run(source: sourceSession, target: targetSession)
            #expect(await targetSession.close() == .ok)
            await sourceSession.close()
            let compared = try await QemuTool.run("qemu-img", ["compare", "-F", "raw", source, target])
            #expect(compared.status == 0, "\(compared.output)")
        }
        // -n over an existing target full of data: zero ranges must be written as zeros.
        let dirty = try await sparseImage("dirty.img", writes: ["write -P 0xee 0 4M"])
        let sourceSession = try await ImageSession.open(raw, options: ImageOpenOptions(readOnly: true))
        let targetSession = try await ImageSession.open(dirty, options: ImageOpenOptions(format: "raw"))
        try await ImageConvert().run(source: sourceSession, target: targetSession)
        await targetSession.close()
        await sourceSession.close()
        #expect(try await QemuTool.run("qemu-img", ["compare", "-f", "raw", "-F", "raw", raw, dirty]).status == 0)
    }

    @Test func benchRunsItsRequestsAndWrapsOffsets() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("bench.img", size: 1 << 20)
        var bench = ImageBench()
        bench.count = 600
        bench.depth = 8
        bench.write = true
        bench.pattern = 0x3c
        bench.flushInterval = 100
        #expect(bench.offset(of: 255, imageBytes: 1 << 20) == 255 * 4096)
        #expect(bench.offset(of: 256, imageBytes: 1 << 20) == 0)
        let session = try await ImageSession.open(path, options: ImageOpenOptions(cacheMode: "none"))
        let result = try await bench.run(session)
        await session.close()
        #expect(result.failed == 0)
        #expect(try await QemuTool.io("read -P 0x3c 0 1M", path))
        let cli = try await QemuTool.run(CommandLineTests.binary, ["io", "-c", "read -P 0x3c 0 4k", path])
        #expect(cli.status == 0)
    }
}

/// qemu-img bench's draining flush: while the flush runs no request is in flight, and requests
/// started meanwhile wait for it.
@Suite struct BenchFlushGateTests {
    private final class Counters: Sendable {
        let active = Atomic<Int>(0)
        let violations = Atomic<Int>(0)
        let flushes = Atomic<Int>(0)
    }

    @Test func flushesRunWithNothingInFlight() async {
        let gate = BenchFlushGate()
        let counters = Counters()
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for step in 0..<200 {
                        await gate.enter()
                        counters.active.wrappingAdd(1, ordering: .relaxed)
                        await Task.yield()
                        counters.active.wrappingSubtract(1, ordering: .relaxed)
                        gate.leave()
                        if (worker + step) % 50 == 0 {
                            await gate.drainAndFlush {
                                if counters.active.load(ordering: .relaxed) != 0 { counters.violations.wrappingAdd(1, ordering: .relaxed) }
                                await Task.yield()
                                if counters.active.load(ordering: .relaxed) != 0 { counters.violations.wrappingAdd(1, ordering: .relaxed) }
                                counters.flushes.wrappingAdd(1, ordering: .relaxed)
                            }
                        }
                    }
                }
            }
        }
        #expect(counters.violations.load(ordering: .relaxed) == 0)
        #expect(counters.flushes.load(ordering: .relaxed) == 32)
    }
}
