import Foundation
import Glibc
import StrataGraph
import StrataNodes
import StrataRuntime
import Testing

/// The qcow2 node writes images QEMU accepts: random workloads (writes of any size and
/// alignment, write-zeroes, discards, flushes) run through Strata against images qemu-img made,
/// then `qemu-img check` must find no errors or leaks and `qemu-img compare` must find the
/// contents a byte-array model of the same workload predicts.
@Suite(.serialized) struct Qcow2WriteTests {
    private static let fileLink = ChildLink(role: .file, optionKey: "file", nodeName: "proto")
    private static let backingLink = ChildLink(role: .backing, optionKey: "backing", nodeName: "base")

    private struct Stack {
        let file: any NodeState
        let qcow2: Qcow2NodeState
        let others: [any NodeState]

        /// Closes the format first: it writes its metadata back through the file.
        func close() async {
            await qcow2.close()
            await file.close()
            for state in others { await state.close() }
        }
    }

    private func tool(_ name: String, _ arguments: [String]) async throws -> QemuTool.Result {
        try await QemuTool.run(name, arguments)
    }

    private func require(_ name: String, _ arguments: [String]) async throws {
        let result = try await tool(name, arguments)
        try #require(result.status == 0, "\(name) \(arguments.joined(separator: " ")): \(result.output)")
    }

    /// A writable qcow2 node over `path`; `backing` is a raw file read through a file node.
    private func open(_ harness: NodeTestHarness, _ path: String, backing: String? = nil,
                      options: [String: JSONValue] = [:]) async throws -> Stack {
        let file = try await harness.open(FileNode.descriptor, name: "proto", options: ["filename": .string(path)])
        var children: [ChildLink: any NodeState] = [Self.fileLink: file]
        var others: [any NodeState] = []
        var qcowOptions = options
        qcowOptions["file"] = .string("proto")
        qcowOptions["backing"] = .null
        if let backing {
            let base = try await harness.open(FileNode.descriptor, name: "base", options: ["filename": .string(backing), "read-only": .bool(true)])
            children[Self.backingLink] = base
            others.append(base)
            qcowOptions["backing"] = .string("base")
        }
        let state = try await harness.open(Qcow2Node.descriptor, name: "fmt", options: qcowOptions, children: children)
        return Stack(file: file, qcow2: try #require(state as? Qcow2NodeState), others: others)
    }

    private func instance(_ harness: NodeTestHarness, _ stack: Stack, queue: QueueExecutor) -> any BlockNode {
        let context = QueueContext(index: 0, executor: queue, clock: MonotonicClock())
        var nodes: [ChildLink: NodeHandle] = [Self.fileLink: NodeHandle(stack.file.makeInstance(queue: context, children: [:]))]
        if let base = stack.others.first { nodes[Self.backingLink] = NodeHandle(base.makeInstance(queue: context, children: [:])) }
        return stack.qcow2.makeInstance(queue: context, children: nodes)
    }

    @Test(arguments: [
        ("1.1", 65536, 16), ("0.10", 65536, 16), ("1.1", 4096, 1), ("1.1", 512, 64), ("1.1", 2 << 20, 8), ("0.10", 1024, 16),
    ])
    func randomWorkloadsPassQemuImgCheck(compat: String, clusterSize: Int, refcountBits: Int) async throws {
        let harness = try NodeTestHarness("qcow2w")
        defer { harness.shutdown() }
        let image = harness.path("w.qcow2")
        let size = max(8 << 20, 4 * clusterSize)
        var options = "compat=\(compat),cluster_size=\(clusterSize)"
        if compat == "1.1" { options += ",refcount_bits=\(refcountBits)" }
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, image, "\(size)"])
        // Some clusters qemu wrote first, so the workload also overwrites and frees them.
        try await require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x33 0 \(3 * clusterSize)", "-c", "write -z \(size / 2) \(clusterSize)", image])
        var model = [UInt8](repeating: 0, count: size)
        for index in 0..<3 * clusterSize { model[index] = 0x33 }
        let stack = try await open(harness, image)
        let node = instance(harness, stack, queue: harness.queue)
        try await Qcow2Workload.run(harness, node: node, model: &model, backingBytes: nil, clusterSize: clusterSize,
                                 version: compat == "1.1" ? 3 : 2, seed: UInt64(clusterSize) ^ 0x5eed, operations: 300)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "compat \(compat) cluster \(clusterSize) refcount \(refcountBits)")
    }

    @Test(arguments: ["1.1", "0.10"])
    func copyOnWriteMergesBackingData(compat: String) async throws {
        let harness = try NodeTestHarness("qcow2cow")
        defer { harness.shutdown() }
        let base = harness.path("base.raw")
        let image = harness.path("overlay.qcow2")
        let size = 4 << 20
        var backingBytes = [UInt8](repeating: 0, count: size)
        for index in 0..<size { backingBytes[index] = UInt8(truncatingIfNeeded: index / 512 &* 7 &+ 1) }
        // The backing file ends early: the overlay reads zeros past its end.
        try Data(backingBytes[0..<(3 << 20)]).write(to: URL(fileURLWithPath: base))
        for index in (3 << 20)..<size { backingBytes[index] = 0 }
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=\(compat),cluster_size=65536",
                                       "-b", base, "-F", "raw", image, "\(size)"])
        var model = backingBytes
        let stack = try await open(harness, image, backing: base)
        let node = instance(harness, stack, queue: harness.queue)
        try await Qcow2Workload.run(harness, node: node, model: &model, backingBytes: backingBytes, clusterSize: 65536,
                                 version: compat == "1.1" ? 3 : 2, seed: 77, operations: 200)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "overlay compat \(compat)")
    }

    /// Writes into clusters shared with an internal snapshot copy them (data and L2 tables), and
    /// into compressed clusters inflate and rewrite them; the snapshot keeps its contents.
    @Test func sharedAndCompressedClustersAreCopiedOnWrite() async throws {
        let harness = try NodeTestHarness("qcow2snapcow")
        defer { harness.shutdown() }
        let source = harness.path("source.raw")
        let image = harness.path("snap.qcow2")
        let size = 2 << 20
        var model = [UInt8](repeating: 0, count: size)
        for index in 0..<size { model[index] = UInt8(truncatingIfNeeded: (index / 4096) % 5 == 0 ? 0 : index % 251) }
        try Data(model).write(to: URL(fileURLWithPath: source))
        try await require("qemu-img", ["convert", "-c", "-O", "qcow2", source, image])
        try await require("qemu-img", ["snapshot", "-c", "before", image])
        let before = model
        let stack = try await open(harness, image)
        let node = instance(harness, stack, queue: harness.queue)
        try await Qcow2Workload.run(harness, node: node, model: &model, backingBytes: nil, clusterSize: 65536,
                                 version: 3, seed: 4242, operations: 150)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "after writes")
        try await require("qemu-img", ["snapshot", "-a", "before", image])
        try await QemuJudge.expectCleanAndEqual(image, before, "snapshot applied")
    }

    /// Two queues write interleaved 4 KiB blocks of the same unallocated clusters at once: every
    /// cluster is allocated exactly once and no write is lost.
    @Test func twoQueuesAllocatingTheSameClustersAgree() async throws {
        let harness = try NodeTestHarness("qcow2mq")
        defer { harness.shutdown() }
        let second = try QueueExecutor(name: "qcow2mq-q1")
        defer { second.shutdown() }
        let image = harness.path("mq.qcow2")
        let size = 16 << 20
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", image, "\(size)"])
        let stack = try await open(harness, image)
        let nodes = [instance(harness, stack, queue: harness.queue), instance(harness, stack, queue: second)]
        let executors = [harness.queue, second]
        let blocks = size / 4096
        await withTaskGroup(of: Void.self) { group in
            for queue in 0..<2 {
                let node = nodes[queue]
                group.addTask {
                    await Task(executorPreference: executors[queue]) {
                        // Eight writers per queue keep several requests in flight on each.
                        await withTaskGroup(of: Void.self) { writers in
                            for writer in 0..<8 {
                                writers.addTask {
                                    var block = queue + 2 * writer
                                    while block < blocks {
                                        // A write, then for some blocks zeros and a second write, all
                                        // racing with the neighbours' allocations of the same cluster.
                                        let offset = UInt64(block * 4096)
                                        let buffer = TestBuffer(count: 4096, filledWith: UInt8(1 + block % 250))
                                        var status = await node.submit(BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: 4096, buffer: buffer.io))
                                        if status == .ok && block % 3 == 0 {
                                            status = await node.submit(BlockRequest(operation: .writeZeroes, offsetBytes: offset, lengthBytes: 4096))
                                        }
                                        if status == .ok && block % 5 == 0 {
                                            buffer.fill(0xee)
                                            status = await node.submit(BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: 4096, buffer: buffer.io))
                                        }
                                        if status != .ok { Issue.record("block \(block): \(status)") }
                                        block += 16
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
        for block in 0..<blocks {
            let byte: UInt8 = block % 5 == 0 ? 0xee : block % 3 == 0 ? 0 : UInt8(1 + block % 250)
            for index in block * 4096..<(block + 1) * 4096 { model[index] = byte }
        }
        try await QemuJudge.expectCleanAndEqual(image, model, "two queues")
        let check = try await tool("qemu-img", ["check", "--output=json", image])
        // 16 MiB of data in 64 KiB clusters: exactly 256 clusters allocated, none twice.
        #expect(check.output.contains("\"allocated-clusters\": 256"), "\(check.output)")
    }

    /// Small clusters with 64-bit refcounts outgrow the refcount table many times over.
    @Test func refcountTableGrowsAndStaysConsistent() async throws {
        let harness = try NodeTestHarness("qcow2grow")
        defer { harness.shutdown() }
        let image = harness.path("grow.qcow2")
        let size = 8 << 20
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", image, "\(size)"])
        let stack = try await open(harness, image)
        let node = instance(harness, stack, queue: harness.queue)
        var model = [UInt8](repeating: 0, count: size)
        let buffer = TestBuffer(count: 256 << 10)
        for chunk in 0..<(size / buffer.count) {
            buffer.fill(UInt8(chunk + 1))
            #expect(await harness.write(node, buffer, at: UInt64(chunk * buffer.count)) == .ok)
            for index in chunk * buffer.count..<(chunk + 1) * buffer.count { model[index] = UInt8(chunk + 1) }
        }
        #expect(await harness.flush(node) == .ok)
        await stack.close()
        try await QemuJudge.expectCleanAndEqual(image, model, "grown refcount table")
    }

    @Test func corruptImagesAreNotOpenedForWriting() async throws {
        let harness = try NodeTestHarness("qcow2rw")
        defer { harness.shutdown() }
        let image = harness.path("flags.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
        let fd = Glibc.open(image, O_WRONLY)
        var value = UInt64(2).bigEndian
        #expect(pwrite(fd, &value, 8, 72) == 8)
        Glibc.close(fd)
        do {
            let stack = try await open(harness, image)
            await stack.close()
            Issue.record("a corrupt image was opened for writing")
        } catch {
            #expect("\(error)".contains("marked corrupt"), "\(error)")
        }
    }

    /// A lazy-refcount image whose writer was killed is dirty: opening it for writing rebuilds
    /// the refcounts first, as QEMU does, and the data survives.
    @Test func dirtyLazyRefcountImageIsRepairedOnOpen() async throws {
        let harness = try NodeTestHarness("qcow2dirty")
        defer { harness.shutdown() }
        let image = harness.path("dirty.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "4M"])
        _ = try await tool("qemu-io", ["-f", "qcow2", "-c", "write -P 0x6b 0 1M", "-c", "sigraise 9", image])
        let before = try await tool("qemu-img", ["check", image])
        #expect(before.status != 0, "the killed writer should leave stale refcounts: \(before.output)")
        let stack = try await open(harness, image)
        #expect(!stack.qcow2.isDirty)
        let node = instance(harness, stack, queue: harness.queue)
        let buffer = TestBuffer(count: 65536, filledWith: 0x21)
        #expect(await harness.write(node, buffer, at: 2 << 20) == .ok)
        await stack.close()
        var model = [UInt8](repeating: 0, count: 4 << 20)
        for index in 0..<(1 << 20) { model[index] = 0x6b }
        for index in (2 << 20)..<((2 << 20) + 65536) { model[index] = 0x21 }
        try await QemuJudge.expectCleanAndEqual(image, model, "repaired dirty image")
    }

    /// Persistent bitmaps survive: a session that wrote nothing leaves their flags as they were;
    /// one that wrote leaves them marked in use (Strata does not update them), which tells QEMU
    /// they may be stale. The image stays clean either way.
    @Test func persistentBitmapsAreKeptAndMarkedInUse() async throws {
        let harness = try NodeTestHarness("qcow2bitmaps")
        defer { harness.shutdown() }
        let image = harness.path("bm.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", image, "8M"])
        try await require("qemu-img", ["bitmap", "--add", image, "b0"])
        try await require("qemu-img", ["bitmap", "--add", "-g", "128k", image, "b1"])
        func flags() async throws -> [String] {
            let info = try await tool("qemu-img", ["info", "--output=json", image])
            let json = try JSONSerialization.jsonObject(with: Data(info.output.utf8)) as? [String: Any]
            let data = (json?["format-specific"] as? [String: Any])?["data"] as? [String: Any]
            let bitmaps = data?["bitmaps"] as? [[String: Any]] ?? []
            return bitmaps.map { "\($0["name"] ?? ""):\(($0["flags"] as? [String] ?? []).joined(separator: ","))" }
        }
        #expect(try await flags() == ["b0:auto", "b1:auto"])
        var stack = try await open(harness, image)
        var node = instance(harness, stack, queue: harness.queue)
        #expect(await read(harness, node, count: 4096) == .ok)
        await stack.close()
        #expect(try await flags() == ["b0:auto", "b1:auto"], "nothing written: flags restored")
        stack = try await open(harness, image)
        node = instance(harness, stack, queue: harness.queue)
        #expect(await harness.write(node, TestBuffer(count: 4096, filledWith: 9), at: 0) == .ok)
        await stack.close()
        #expect(try await flags() == ["b0:in-use,auto", "b1:in-use,auto"])
        let check = try await tool("qemu-img", ["check", image])
        #expect(check.status == 0, "\(check.output)")
    }

    /// Reads on two queues through a two-table L2 cache over sixteen tables: slots are refilled
    /// all the time under the lock-free lookups, which must fall back, never return a word of
    /// another table.
    @Test func lockFreeLookupsSurviveConstantEviction() async throws {
        let harness = try NodeTestHarness("qcow2seq")
        defer { harness.shutdown() }
        let second = try QueueExecutor(name: "qcow2seq-q1")
        defer { second.shutdown() }
        let image = harness.path("seq.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", image, "32M"])
        // Each 2 MiB (one L2 table's reach) holds its own byte.
        try await require("qemu-io", ["-f", "qcow2"] + (0..<16).flatMap { ["-c", "write -P \($0 + 1) \($0 * 2)M 2M"] } + [image])
        let stack = try await open(harness, image, options: ["l2-cache-size": .int(8192)])
        #expect(stack.qcow2.l2CacheTables == 2)
        let nodes = [instance(harness, stack, queue: harness.queue), instance(harness, stack, queue: second)]
        let executors = [harness.queue, second]
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for queue in 0..<2 {
                let node = nodes[queue]
                group.addTask {
                    await Task(executorPreference: executors[queue]) {
                        await withTaskGroup(of: Int.self) { readers in
                            for reader in 0..<4 {
                                readers.addTask {
                                    var random = SeededRandom(state: UInt64(queue * 10 + reader))
                                    var bad = 0
                                    let buffer = TestBuffer(count: 4096)
                                    for _ in 0..<400 {
                                        let block = random.below(32 << 20 / 4096)
                                        let status = await node.submit(BlockRequest(operation: .read, offsetBytes: UInt64(block * 4096),
                                                                                    lengthBytes: 4096, buffer: buffer.io))
                                        if status != .ok || !buffer.allEqual(UInt8(block * 4096 / (2 << 20) + 1)) { bad += 1 }
                                    }
                                    return bad
                                }
                            }
                            return await readers.reduce(0, +)
                        }
                    }.value
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        await stack.close()
    }

    /// Snapshot tables and bitmap directories pointing anywhere: opening for writing (which reads
    /// them) fails with an error naming the table, never a crash or a huge allocation.
    @Test func hostileSnapshotAndBitmapTablesRefuseWriting() async throws {
        let harness = try NodeTestHarness("qcow2hostilerw")
        defer { harness.shutdown() }
        let snap = harness.path("snap.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", snap, "4M"])
        try await require("qemu-img", ["snapshot", "-c", "s", snap])
        let snapshotsOffset = try readBE64(snap, at: 64)
        // The entry's extra-data size (offset 36 in the entry): far more than a table may hold.
        try writeBE(snap, at: Int(snapshotsOffset) + 36, 0x7fff_ffff, bytes: 4)
        await expectOpenFails(harness, snap, containing: "snapshot table")

        let bitmaps = harness.path("bitmaps.qcow2")
        try await require("qemu-img", ["create", "-q", "-f", "qcow2", bitmaps, "4M"])
        try await require("qemu-img", ["bitmap", "--add", bitmaps, "b0"])
        let header = Array(try Data(contentsOf: URL(fileURLWithPath: bitmaps)).prefix(4096))
        var offset = 112
        var directoryField: Int?
        while offset + 8 <= header.count {
            let type = header[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let length = Int(header[offset + 4..<offset + 8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            if type == 0x2385_2875 { directoryField = offset + 8 + 16 }
            if type == 0 { break }
            offset += 8 + (length + 7) & ~7
        }
        let field = try #require(directoryField, "no bitmaps extension")
        try writeBE(bitmaps, at: field, 1 << 40, bytes: 8)
        await expectOpenFails(harness, bitmaps, containing: "bitmap directory")
    }

    private func expectOpenFails(_ harness: NodeTestHarness, _ image: String, containing text: String) async {
        do {
            let stack = try await open(harness, image)
            await stack.close()
            Issue.record("\(image) opened for writing")
        } catch {
            #expect("\(error)".contains(text), "\(error)")
        }
    }

    private func readBE64(_ path: String, at offset: Int) throws -> UInt64 {
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path))[offset..<offset + 8])
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    private func writeBE(_ path: String, at offset: Int, _ value: UInt64, bytes: Int) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        handle.write(Data((0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(bytes - 1 - $0))) }))
    }

    private func read(_ harness: NodeTestHarness, _ node: any BlockNode, count: Int) async -> IOStatus {
        await harness.read(node, TestBuffer(count: count), at: 0)
    }
}
