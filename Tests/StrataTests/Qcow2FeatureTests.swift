import Foundation
import Glibc
import StrataGraph
import StrataRuntime
import Testing

@testable import StrataNodes

/// The qcow2 features beyond the basic format, against qemu-img / qemu-io 7.2: extended L2
/// entries (subclusters), external data files (raw or not) and zstd compression. Images qemu
/// made and wrote read back through Strata as `qemu-img convert -O raw` reads them; random
/// workloads through Strata leave images `qemu-img check` finds clean and `qemu-img compare`
/// finds equal to a byte-array model.
@Suite(.serialized) struct Qcow2FeatureTests {
    private static let fileLink = ChildLink(role: .file, optionKey: "file", nodeName: "proto")
    private static let dataLink = ChildLink(role: .data, optionKey: "data-file", nodeName: "data")
    private static let backingLink = ChildLink(role: .backing, optionKey: "backing", nodeName: "base")

    private struct Stack {
        let qcow2: Qcow2NodeState
        let node: any BlockNode
        let children: [ChildLink: any NodeState]

        /// The format first: it writes its metadata back through the file.
        func close() async {
            await qcow2.close()
            for state in children.values { await state.close() }
        }
    }

    private func tool(_ name: String, _ arguments: [String]) async throws -> QemuTool.Result {
        try await QemuTool.run(name, arguments)
    }

    private func require(_ name: String, _ arguments: [String]) async throws {
        let result = try await tool(name, arguments)
        try #require(result.status == 0, "\(name) \(arguments.joined(separator: " ")): \(result.output)")
    }

    private func qemuIO(_ image: String, _ commands: [String]) async throws {
        try await require("qemu-io", ["-f", "qcow2"] + commands.flatMap { ["-c", $0] } + [image])
    }

    /// A qcow2 node over `image`, with `data` as its data file and `backing` (raw) as its backing
    /// node when given.
    private func open(_ harness: NodeTestHarness, _ image: String, data: String? = nil, backing: String? = nil,
                      readOnly: Bool = false) async throws -> Stack {
        let file = try await harness.open(FileNode.descriptor, name: "proto", options: ["filename": .string(image), "read-only": .bool(readOnly)])
        var states: [ChildLink: any NodeState] = [Self.fileLink: file]
        var options: [String: JSONValue] = ["file": .string("proto"), "backing": .null, "read-only": .bool(readOnly)]
        if let data {
            states[Self.dataLink] = try await harness.open(FileNode.descriptor, name: "data",
                                                           options: ["filename": .string(data), "read-only": .bool(readOnly)])
            options["data-file"] = .string("data")
        }
        if let backing {
            states[Self.backingLink] = try await harness.open(FileNode.descriptor, name: "base",
                                                              options: ["filename": .string(backing), "read-only": .bool(true)])
            options["backing"] = .string("base")
        }
        let state = try await harness.open(Qcow2Node.descriptor, name: "fmt", options: options, children: states)
        let qcow2 = try #require(state as? Qcow2NodeState)
        var nodes: [ChildLink: any BlockNode] = [:]
        for (link, child) in states { nodes[link] = harness.instance(child) }
        return Stack(qcow2: qcow2, node: harness.instance(qcow2, children: nodes), children: states)
    }

    /// The guest view as qemu-img reads it.
    private func rawImage(_ image: String) async throws -> [UInt8] {
        let raw = image + ".raw"
        try await require("qemu-img", ["convert", "-O", "raw", image, raw])
        return Array(try Data(contentsOf: URL(fileURLWithPath: raw)))
    }

    /// Strata reads the whole image, and pieces crossing subcluster and cluster boundaries, as
    /// qemu-img does.
    private func expectSameAsQemu(_ harness: NodeTestHarness, _ stack: Stack, image: String, _ label: String) async throws {
        let expected = try await rawImage(image)
        let whole = TestBuffer(count: expected.count, misalignment: 3, filledWith: 0xa5)
        #expect(await harness.read(stack.node, whole, at: 0) == .ok, "\(label): whole read")
        let bytes = whole.bytes
        let mismatch = bytes.indices.first { bytes[$0] != expected[$0] }
        #expect(mismatch == nil, "\(label): whole-image read differs from qemu-img convert at byte \(mismatch ?? 0)")
        let cluster = stack.qcow2.clusterSize
        let sub = cluster / 32
        for (offset, count) in [(sub - 1, 2), (cluster - 300, cluster + 700), (3 * cluster + sub + 17, 2 * sub + 5), (expected.count - 513, 513)] {
            guard offset >= 0, offset + count <= expected.count else { continue }
            let piece = TestBuffer(count: count, misalignment: 1)
            #expect(await harness.read(stack.node, piece, at: UInt64(offset)) == .ok)
            #expect(piece.bytes[...].elementsEqual(expected[offset..<offset + count]), "\(label): piece at \(offset)+\(count) differs")
        }
    }

    /// A raw backing file whose every 512-byte sector differs from its neighbours.
    private func makeBacking(_ path: String, size: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        for index in 0..<size { bytes[index] = UInt8(truncatingIfNeeded: index / 512 &* 7 &+ 3) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return bytes
    }

    // MARK: Extended L2 entries

    @Test(arguments: [16384, 65536, 2 << 20])
    func extendedL2ReadsWhatQemuWrote(clusterSize: Int) async throws {
        let harness = try NodeTestHarness("qcow2xl2r")
        defer { harness.shutdown() }
        let base = harness.path("base.raw")
        let image = harness.path("x.qcow2")
        let size = max(8 << 20, 8 * clusterSize)
        _ = try makeBacking(base, size: size)
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=\(clusterSize)",
                                       "-b", base, "-F", "raw", image, "\(size)"])
        let sub = clusterSize / 32
        try await qemuIO(image, [
            "write -P 0x11 0 \(sub)",
            "write -P 0x22 \(3 * sub + 100) \(2 * sub)",
            "write -z \(clusterSize + 2 * sub) \(4 * sub)",
            "write -P 0x33 \(2 * clusterSize - sub) \(2 * sub)",
            "write -P 0x44 \(4 * clusterSize) \(clusterSize)",
            "write -z \(4 * clusterSize + 5 * sub) \(sub)",
            "discard \(6 * clusterSize) \(clusterSize)",
            "write -P 0x55 \(size - 700) 700",
        ])
        let stack = try await open(harness, image, backing: base, readOnly: true)
        try await expectSameAsQemu(harness, stack, image: image, "cluster \(clusterSize)")
        // Block status per subcluster: the first subcluster is data, the second the backing file's.
        let first = try await stack.qcow2.blockStatus(offsetBytes: 0, maxLengthBytes: UInt64(size))
        #expect(first.isData && first.lengthBytes == UInt64(sub), "\(first)")
        let second = try await stack.qcow2.blockStatus(offsetBytes: UInt64(sub), maxLengthBytes: UInt64(size))
        #expect(!second.isAllocated && second.lengthBytes == UInt64(2 * sub), "\(second)")
        let zeroed = try await stack.qcow2.blockStatus(offsetBytes: UInt64(clusterSize + 2 * sub), maxLengthBytes: UInt64(size))
        #expect(zeroed.isZero && zeroed.lengthBytes == UInt64(4 * sub), "\(zeroed)")
        await stack.close()
    }

    @Test(arguments: [(65536, false), (16384, true), (65536, true), (2 << 20, false)])
    func extendedL2RandomWorkloadsPassQemuImgCheck(clusterSize: Int, withBacking: Bool) async throws {
        let harness = try NodeTestHarness("qcow2xl2w")
        defer { harness.shutdown() }
        let base = harness.path("base.raw")
        let image = harness.path("x.qcow2")
        let size = max(4 << 20, 4 * clusterSize)
        var model = withBacking ? try makeBacking(base, size: size) : [UInt8](repeating: 0, count: size)
        var arguments = ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=\(clusterSize)"]
        if withBacking { arguments += ["-b", base, "-F", "raw"] }
        try await require("qemu-img", arguments + [image, "\(size)"])
        // Subclusters qemu wrote and zeroed first, so the workload meets every kind.
        let sub = clusterSize / 32
        try await qemuIO(image, ["write -P 0x33 \(sub) \(3 * sub)", "write -z \(clusterSize) \(2 * sub)"])
        for index in sub..<4 * sub { model[index] = 0x33 }
        for index in clusterSize..<clusterSize + 2 * sub { model[index] = 0 }
        let stack = try await open(harness, image, backing: withBacking ? base : nil)
        try await Qcow2Workload.run(harness, node: stack.node, model: &model, clusterSize: clusterSize, seed: UInt64(clusterSize) ^ (withBacking ? 0xb4c : 0x5eed), operations: 300, subclusterBiased: true)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "extended L2, cluster \(clusterSize), backing \(withBacking)")
        // Strata reads back what it wrote, through a fresh node.
        let reopened = try await open(harness, image, backing: withBacking ? base : nil, readOnly: true)
        try await expectSameAsQemu(harness, reopened, image: image, "reopened")
        await reopened.close()
    }

    /// Clusters shared with an internal snapshot are copied on write with every subcluster that
    /// held data; the snapshot keeps its contents.
    @Test func extendedL2SharedClustersAreCopiedOnWrite() async throws {
        let harness = try NodeTestHarness("qcow2xl2snap")
        defer { harness.shutdown() }
        let image = harness.path("snap.qcow2")
        let size = 4 << 20
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", image, "\(size)"])
        try await qemuIO(image, ["write -P 0x61 0 1M", "write -P 0x62 2052k 6k", "write -z 8k 4k"])
        try await require("qemu-img", ["snapshot", "-c", "before", image])
        let before = try await rawImage(image)
        var model = before
        let stack = try await open(harness, image)
        try await Qcow2Workload.run(harness, node: stack.node, model: &model, clusterSize: 65536, seed: 4243, operations: 150, subclusterBiased: true)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "after writes")
        try await require("qemu-img", ["snapshot", "-a", "before", image])
        try await QemuJudge.expectCleanAndEqual(image, before, "snapshot applied")
    }

    /// Two queues write interleaved subclusters of the same clusters at once: each write either
    /// fills its subcluster under the allocation lock or overwrites it in place, and none is lost.
    @Test func extendedL2TwoQueuesFillingTheSameClustersAgree() async throws {
        let harness = try NodeTestHarness("qcow2xl2mq")
        defer { harness.shutdown() }
        let second = try QueueExecutor(name: "qcow2xl2mq-q1")
        defer { second.shutdown() }
        let image = harness.path("mq.qcow2")
        let size = 4 << 20
        let block = 2048
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", image, "\(size)"])
        let stack = try await open(harness, image)
        let context = QueueContext(index: 1, executor: second, clock: MonotonicClock())
        let secondChildren = stack.children.mapValues { NodeHandle($0.makeInstance(queue: context, children: [:])) }
        let nodes = [stack.node, stack.qcow2.makeInstance(queue: context, children: secondChildren)]
        let executors = [harness.queue, second]
        let blocks = size / block
        await withTaskGroup(of: Void.self) { group in
            for queue in 0..<2 {
                let node = nodes[queue]
                group.addTask {
                    await Task(executorPreference: executors[queue]) {
                        await withTaskGroup(of: Void.self) { writers in
                            for writer in 0..<8 {
                                writers.addTask {
                                    var index = queue + 2 * writer
                                    while index < blocks {
                                        let buffer = TestBuffer(count: block, filledWith: UInt8(1 + index % 250))
                                        let status = await node.submit(BlockRequest(operation: .write, offsetBytes: UInt64(index * block),
                                                                                    lengthBytes: block, buffer: buffer.io))
                                        if status != .ok { Issue.record("block \(index): \(status)") }
                                        index += 16
                                    }
                                }
                            }
                        }
                    }.value
                }
            }
        }
        #expect(await harness.flush(nodes[0]) == .ok)
        await stack.close()
        var model = [UInt8](repeating: 0, count: size)
        for index in 0..<blocks { for byte in index * block..<(index + 1) * block { model[byte] = UInt8(1 + index % 250) } }
        try await QemuJudge.expectCleanAndEqual(image, model, "two queues")
        let check = try await tool("qemu-img", ["check", "--output=json", image])
        #expect(check.output.contains("\"allocated-clusters\": 64"), "\(check.output)")
    }

    // MARK: External data files

    @Test(arguments: [true, false])
    func dataFileImagesReadWhatQemuWrote(raw: Bool) async throws {
        let harness = try NodeTestHarness("qcow2dfr")
        defer { harness.shutdown() }
        let image = harness.path("d.qcow2")
        let data = harness.path("d.data")
        let size = 4 << 20
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=\(data),data_file_raw=\(raw ? "on" : "off")", image, "\(size)"])
        try await qemuIO(image, ["write -P 0x11 0 4096", "write -P 0x22 65000 70000", "write -z 1M 128k", "write -P 0x33 \(size - 512) 512"])
        let stack = try await open(harness, image, data: data, readOnly: true)
        try await expectSameAsQemu(harness, stack, image: image, "data file raw \(raw)")
        await stack.close()

        // Without 'data-file' the open fails naming the file the image expects.
        let file = try await harness.open(FileNode.descriptor, name: "proto", options: ["filename": .string(image), "read-only": .bool(true)])
        let error = await harness.openError(Qcow2Node.descriptor, name: "fmt", options: ["file": .string("proto"), "read-only": .bool(true)],
                                            children: [Self.fileLink: file])
        #expect(error?.contains("give 'data-file'") == true && error?.contains(data) == true, "\(error ?? "no error")")
        await file.close()
    }

    @Test(arguments: [(true, false), (false, false), (true, true), (false, true)])
    func dataFileRandomWorkloadsPassQemuImgCheck(raw: Bool, extendedL2: Bool) async throws {
        let harness = try NodeTestHarness("qcow2dfw")
        defer { harness.shutdown() }
        let image = harness.path("d.qcow2")
        let data = harness.path("d.data")
        let size = 4 << 20
        var options = "data_file=\(data),data_file_raw=\(raw ? "on" : "off")"
        if extendedL2 { options += ",extended_l2=on" }
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, image, "\(size)"])
        try await qemuIO(image, ["write -P 0x33 0 192k", "write -z 2M 64k"])
        var model = [UInt8](repeating: 0, count: size)
        for index in 0..<(192 << 10) { model[index] = 0x33 }
        let stack = try await open(harness, image, data: data)
        try await Qcow2Workload.run(harness, node: stack.node, model: &model, clusterSize: 65536, seed: (raw ? 0xd47a : 0xd47b) ^ (extendedL2 ? 0x100 : 0), operations: 250, subclusterBiased: true)
        await stack.close()
        let label = "data file raw \(raw) extended L2 \(extendedL2)"
        try await QemuJudge.expectCleanAndEqual(image, model, label)
        if raw {
            // The data file alone is the guest's disk.
            var contents = Array(try Data(contentsOf: URL(fileURLWithPath: data)))
            #expect(contents.count <= size, "\(label): data file is \(contents.count) bytes")
            contents += [UInt8](repeating: 0, count: max(0, size - contents.count))
            let mismatch = contents.indices.first { contents[$0] != model[$0] }
            #expect(mismatch == nil, "\(label): the raw data file differs from the guest at byte \(mismatch ?? 0)")
        }
    }

    // MARK: zstd

    @Test(arguments: [4096, 65536])
    func zstdCompressedImagesReadAndWrite(clusterSize: Int) async throws {
        let harness = try NodeTestHarness("qcow2zstd")
        defer { harness.shutdown() }
        let source = harness.path("source.raw")
        let image = harness.path("z.qcow2")
        let size = 2 << 20
        var model = [UInt8](repeating: 0, count: size)
        // Compressible text-like data, incompressible noise, and zeros.
        var random = SeededRandom(state: 0x2571)
        for index in 0..<size {
            switch (index / 8192) % 4 {
            case 0: model[index] = UInt8(truncatingIfNeeded: index % 97 + 32)
            case 1: model[index] = UInt8(truncatingIfNeeded: random.next())
            case 2: model[index] = 0
            default: model[index] = UInt8(truncatingIfNeeded: (index / 512) % 13)
            }
        }
        try Data(model).write(to: URL(fileURLWithPath: source))
        try await require("qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=\(clusterSize)", source, image])
        try await qemuIO(image, ["write -P 0x7e 100000 5000"])
        for index in 100_000..<105_000 { model[index] = 0x7e }
        let info = try await tool("qemu-img", ["info", image])
        #expect(info.output.contains("compression type: zstd"), "\(info.output)")
        let reader = try await open(harness, image, readOnly: true)
        try await expectSameAsQemu(harness, reader, image: image, "zstd cluster \(clusterSize)")
        await reader.close()

        // Writes into compressed clusters decompress and rewrite them.
        let stack = try await open(harness, image)
        try await Qcow2Workload.run(harness, node: stack.node, model: &model, clusterSize: clusterSize, seed: 0x25d, operations: 120, subclusterBiased: true)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "zstd cluster \(clusterSize) after writes")
    }

    /// The compressor's frames are standard zstd (the zstd tool decodes them) and decompress back
    /// through the reader's decompressor; output that does not fit is refused.
    @Test func zstdCompressorRoundTrips() async throws {
        let harness = try NodeTestHarness("qcow2zstdc")
        defer { harness.shutdown() }
        let clusterSize = 65536
        let input = UnsafeMutableRawPointer.allocate(byteCount: clusterSize, alignment: 16)
        let output = UnsafeMutableRawPointer.allocate(byteCount: clusterSize, alignment: 16)
        let back = UnsafeMutableRawPointer.allocate(byteCount: clusterSize, alignment: 16)
        defer { input.deallocate(); output.deallocate(); back.deallocate() }
        for index in 0..<clusterSize { input.storeBytes(of: UInt8(truncatingIfNeeded: index % 251 + index / 4096), toByteOffset: index, as: UInt8.self) }
        let compressor = try #require(Qcow2ZstdCompressor())
        let compressed = try #require(compressor.compress(input: input, inputCount: clusterSize, output: output, outputCapacity: clusterSize - 512))
        #expect(compressed > 0 && compressed < clusterSize / 4)
        // As read from an image: rounded up to sectors, trailing bytes after the frame.
        let rounded = (compressed + 511) / 512 * 512
        (output + compressed).initializeMemory(as: UInt8.self, repeating: 0xee, count: rounded - compressed)
        let decompressor = try #require(Qcow2ZstdDecompressor())
        #expect(decompressor.decompress(input: output, inputCount: rounded, output: back, outputCount: clusterSize))
        #expect(memcmp(input, back, clusterSize) == 0)
        // A frame cut short is an error, not a short cluster.
        #expect(!decompressor.decompress(input: output, inputCount: compressed / 2, output: back, outputCount: clusterSize))

        let frame = harness.path("frame.zst")
        try Data(bytes: output, count: compressed).write(to: URL(fileURLWithPath: frame))
        try await require("zstd", ["-q", "-d", "-f", frame, "-o", harness.path("frame.out")])
        let decoded = try Data(contentsOf: URL(fileURLWithPath: harness.path("frame.out")))
        #expect(decoded.elementsEqual(UnsafeRawBufferPointer(start: input, count: clusterSize)))

        // Noise does not compress into less than the cluster.
        var random = SeededRandom(state: 9)
        for index in stride(from: 0, to: clusterSize, by: 8) { input.storeBytes(of: random.next(), toByteOffset: index, as: UInt64.self) }
        #expect(compressor.compress(input: input, inputCount: clusterSize, output: output, outputCapacity: clusterSize - 512) == nil)
    }
}
