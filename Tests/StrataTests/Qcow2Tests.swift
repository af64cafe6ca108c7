import Foundation
import Glibc
import StrataEngine
import StrataGraph
import StrataNodes
import StrataRuntime
import Testing

/// The qcow2 node reads QEMU's images: every image here is made by qemu-img / qemu-io at test time,
/// read through Strata, and compared with the patterns written and with `qemu-img convert -O raw`.
@Suite struct Qcow2Tests {
    private static let fileLink = ChildLink(role: .file, optionKey: "file", nodeName: "proto")

    /// A file node and a qcow2 node over the image at `path`.
    private struct Stack {
        let file: any NodeState
        let qcow2: Qcow2NodeState
        let node: any BlockNode
        /// Other states opened for the stack (a backing chain), closed with it.
        var others: [any NodeState] = []

        func close() async {
            await file.close()
            for state in others { await state.close() }
        }
    }

    private func tool(_ name: String, _ arguments: [String]) async throws {
        let result = try await QemuTool.run(name, arguments)
        try #require(result.status == 0, "\(name) \(arguments.joined(separator: " ")): \(result.output)")
    }

    private func qemuIO(_ image: String, _ commands: [String]) async throws {
        try await tool("qemu-io", ["-f", "qcow2"] + commands.flatMap { ["-c", $0] } + [image])
    }

    private func openFile(_ harness: NodeTestHarness, _ path: String, name: String) async throws -> any NodeState {
        try await harness.open(FileNode.descriptor, name: name, options: ["filename": .string(path), "read-only": .bool(true)])
    }

    private func openImage(_ harness: NodeTestHarness, _ path: String, options: [String: JSONValue] = [:],
                           backing: (state: any NodeState, node: any BlockNode)? = nil) async throws -> Stack {
        let file = try await openFile(harness, path, name: "proto")
        var qcowOptions = options
        qcowOptions["file"] = .string("proto")
        if qcowOptions["read-only"] == nil { qcowOptions["read-only"] = .bool(true) }
        var states: [ChildLink: any NodeState] = [Self.fileLink: file]
        var nodes: [ChildLink: any BlockNode] = [Self.fileLink: harness.instance(file)]
        if let backing {
            let link = ChildLink(role: .backing, optionKey: "backing", nodeName: "base")
            qcowOptions["backing"] = .string("base")
            states[link] = backing.state
            nodes[link] = backing.node
        }
        do {
            let state = try await harness.open(Qcow2Node.descriptor, name: "fmt", options: qcowOptions, children: states)
            let qcow2 = try #require(state as? Qcow2NodeState)
            return Stack(file: file, qcow2: qcow2, node: harness.instance(qcow2, children: nodes))
        } catch {
            await file.close()
            throw error
        }
    }

    /// The whole guest view as qemu-img sees it.
    private func rawImage(_ harness: NodeTestHarness, _ image: String) async throws -> [UInt8] {
        let raw = image + ".raw"
        try await tool("qemu-img", ["convert", "-O", "raw", image, raw])
        return Array(try Data(contentsOf: URL(fileURLWithPath: raw)))
    }

    private func read(_ harness: NodeTestHarness, _ node: any BlockNode, offset: UInt64, count: Int) async -> (IOStatus, [UInt8]) {
        let buffer = TestBuffer(count: count, misalignment: 3, filledWith: 0xa5)
        let status = await harness.read(node, buffer, at: offset)
        return (status, buffer.bytes)
    }

    /// Reads the whole image through Strata in pieces that cross cluster boundaries, and compares
    /// it with qemu-img's raw conversion.
    private func expectSameAsQemu(_ harness: NodeTestHarness, _ stack: Stack, image: String) async throws {
        let expected = try await rawImage(harness, image)
        #expect(UInt64(expected.count) == stack.qcow2.sizeBytes)
        let (status, whole) = await read(harness, stack.node, offset: 0, count: expected.count)
        #expect(status == .ok)
        let mismatch = whole.indices.first { whole[$0] != expected[$0] }
        #expect(mismatch == nil, "whole-image read differs from qemu-img convert at byte \(mismatch ?? 0)")
        // Unaligned pieces, each crossing at least one cluster boundary.
        let cluster = stack.qcow2.clusterSize
        for (offset, count) in [(cluster - 1, 2), (cluster - 300, cluster + 700), (3 * cluster + 17, 2 * cluster + 5), (expected.count - 513, 513)] {
            guard offset >= 0, offset + count <= expected.count else { continue }
            let (pieceStatus, piece) = await read(harness, stack.node, offset: UInt64(offset), count: count)
            #expect(pieceStatus == .ok)
            #expect(piece[...].elementsEqual(expected[offset..<offset + count]), "piece at \(offset)+\(count) differs")
        }
    }

    @Test(arguments: [("0.10", 512), ("1.1", 512), ("0.10", 65536), ("1.1", 65536), ("0.10", 2 << 20), ("1.1", 2 << 20)])
    func readsWhatQemuWrote(compat: String, clusterSize: Int) async throws {
        let harness = try NodeTestHarness("qcow2rw")
        defer { harness.shutdown() }
        let image = harness.path("image.qcow2")
        let size = 8 << 20
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=\(compat),cluster_size=\(clusterSize)", image, "\(size)"])
        try await qemuIO(image, [
            "write -P 0x11 0 4096",
            "write -P 0x22 65000 70000",
            "write -P 0x44 1M 256k",
            "write -z 1M 128k",
            "write -P 0x55 5000000 3000",
            "write -P 0x66 \(size - 512) 512",
        ])
        let stack = try await openImage(harness, image)
        #expect(stack.qcow2.version == (compat == "1.1" ? 3 : 2))
        #expect(stack.qcow2.clusterSize == clusterSize)
        #expect(stack.qcow2.sizeBytes == UInt64(size))

        // The patterns, read back directly.
        let checks: [(UInt64, Int, UInt8)] = [(0, 4096, 0x11), (65000, 70000, 0x22), (1 << 20, 128 << 10, 0), ((1 << 20) + (128 << 10), 128 << 10, 0x44),
                                             (5_000_000, 3000, 0x55), (UInt64(size - 512), 512, 0x66), (4 << 20, 4096, 0)]
        for (offset, count, byte) in checks {
            let (status, bytes) = await read(harness, stack.node, offset: offset, count: count)
            #expect(status == .ok)
            #expect(bytes.allSatisfy { $0 == byte }, "0x\(String(byte, radix: 16)) expected at \(offset)+\(count)")
        }
        try await expectSameAsQemu(harness, stack, image: image)
        await stack.close()

        // The smallest L2 cache (two tables, as QEMU's minimum) evicts on almost every cluster.
        let small = try await openImage(harness, image, options: ["l2-cache-size": .int(0)])
        #expect(small.qcow2.l2CacheTables == min(2, stack.qcow2.l2CacheTables))
        try await expectSameAsQemu(harness, small, image: image)
        await small.close()
    }

    @Test(arguments: [("1.1", 4096), ("1.1", 65536), ("0.10", 65536)])
    func readsCompressedClusters(compat: String, clusterSize: Int) async throws {
        let harness = try NodeTestHarness("qcow2z")
        defer { harness.shutdown() }
        let source = harness.path("source.qcow2")
        let image = harness.path("compressed.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", source, "4M"])
        try await qemuIO(source, ["write -P 0x71 0 1M", "write -P 0x72 1500000 100000", "write -P 0x73 3M 1M"])
        try await tool("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", "compat=\(compat),cluster_size=\(clusterSize)", source, image])
        // Patterns compress well: the image must be much smaller than the 2.1 MB written.
        let attributes = try FileManager.default.attributesOfItem(atPath: image)
        #expect((attributes[.size] as? Int ?? .max) < 1 << 20)

        let stack = try await openImage(harness, image)
        let (status, bytes) = await read(harness, stack.node, offset: 1_500_000 - 10, count: 100_020)
        #expect(status == .ok)
        #expect(bytes[..<10].allSatisfy { $0 == 0 } && bytes[10..<100_010].allSatisfy { $0 == 0x72 } && bytes[100_010...].allSatisfy { $0 == 0 })
        try await expectSameAsQemu(harness, stack, image: image)
        await stack.close()
    }

    /// An overlay larger than its backing file: unallocated clusters come from the backing node,
    /// and past the backing node's end they read as zeros.
    @Test func readsThroughABackingChain() async throws {
        let harness = try NodeTestHarness("qcow2chain")
        defer { harness.shutdown() }
        let base = harness.path("base.qcow2")
        let overlay = harness.path("overlay.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", base, "2M"])
        try await qemuIO(base, ["write -P 0x0b 0 2M"])
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", base, "-F", "qcow2", overlay, "4M"])
        try await qemuIO(overlay, ["write -P 0x0c 100000 5000", "write -z 512k 64k", "write -P 0x0d 3M 4096"])

        let baseFile = try await openFile(harness, base, name: "basefile")
        let baseState = try await harness.open(Qcow2Node.descriptor, name: "base", options: ["file": .string("basefile")],
                                               children: [ChildLink(role: .file, optionKey: "file", nodeName: "basefile"): baseFile])
        let baseNode = harness.instance(baseState, children: [ChildLink(role: .file, optionKey: "file", nodeName: "basefile"): harness.instance(baseFile)])
        var stack = try await openImage(harness, overlay, backing: (baseState, baseNode))
        stack.others = [baseFile]
        #expect(stack.qcow2.backingFileName == base)
        #expect(stack.qcow2.backingFormat == "qcow2")

        let (status, bytes) = await read(harness, stack.node, offset: 0, count: 4 << 20)
        #expect(status == .ok)
        #expect(bytes[..<100_000].allSatisfy { $0 == 0x0b })
        #expect(bytes[100_000..<105_000].allSatisfy { $0 == 0x0c })
        #expect(bytes[(512 << 10)..<(576 << 10)].allSatisfy { $0 == 0 })
        #expect(bytes[(576 << 10)..<(2 << 20)].allSatisfy { $0 == 0x0b })
        #expect(bytes[(2 << 20)..<(3 << 20)].allSatisfy { $0 == 0 }, "past the backing file's end reads zeros")
        #expect(bytes[(3 << 20)..<((3 << 20) + 4096)].allSatisfy { $0 == 0x0d })
        // Across the backing file's end in one request.
        let (edgeStatus, edge) = await read(harness, stack.node, offset: (2 << 20) - 100, count: 300)
        #expect(edgeStatus == .ok)
        #expect(edge[..<100].allSatisfy { $0 == 0x0b } && edge[100...].allSatisfy { $0 == 0 })
        try await expectSameAsQemu(harness, stack, image: overlay)
        #expect(await harness.flush(stack.node) == .ok)
        await stack.close()

        // Without `backing`, an image that names a backing file is refused; null means none.
        let overlayFile = try await openFile(harness, overlay, name: "proto")
        let refused = await harness.openError(Qcow2Node.descriptor, name: "fmt", options: ["file": .string("proto")],
                                              children: [Self.fileLink: overlayFile])
        await overlayFile.close()
        #expect(refused?.contains("give 'backing' explicitly as a node name") == true, "\(refused ?? "no error")")
        let alone = try await openImage(harness, overlay, options: ["backing": .null])
        let (aloneStatus, aloneBytes) = await read(harness, alone.node, offset: 0, count: 4096)
        #expect(aloneStatus == .ok && aloneBytes.allSatisfy { $0 == 0 })
        await alone.close()
        await baseFile.close()
    }

    @Test func writesAreRefusedAndOptionsChecked() async throws {
        let harness = try NodeTestHarness("qcow2ro")
        defer { harness.shutdown() }
        let image = harness.path("ro.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
        let stack = try await openImage(harness, image, options: ["l2-cache-size": .int(1 << 20)])
        #expect(stack.qcow2.l2CacheTables == 1, "never more tables than the image has")
        #expect(await harness.write(stack.node, TestBuffer(count: 512), at: 0) == .readOnly)
        for operation in [BlockOperation.writeZeroes, .discard] {
            #expect(await harness.submit(stack.node, BlockRequest(operation: operation, offsetBytes: 0, lengthBytes: 512)) == .readOnly)
        }
        #expect(await read(harness, stack.node, offset: (1 << 20) - 1, count: 2).0 == .ioError, "past the end of the disk")
        await stack.close()

        let cases: [([String: JSONValue], String)] = [
            (["read-only": .string("yes")], "fmt: Parameter 'read-only'"),
            (["l2-cache-size": .int(-1)], "fmt: Parameter 'l2-cache-size' must be between 0 and"),
            (["cache-size": .int(65536), "l2-cache-size": .int(131072)], "fmt: Parameter 'cache-size' (65536) is smaller than l2-cache-size plus refcount-cache-size"),
            (["bogus": .int(1)], "fmt: Parameter 'bogus' is unexpected"),
        ]
        for (options, expected) in cases {
            var all = options
            all["file"] = .string("proto")
            do {
                var reader = OptionReader(nodeName: "fmt", options: all)
                _ = try Qcow2Node.descriptor.parse(&reader)
                Issue.record("\(options): accepted")
            } catch {
                #expect("\(error)".hasPrefix(expected), "\(options): got \(error)")
            }
        }
        #expect(try DriverCatalog.registry.descriptor("qcow2").name == "qcow2")

        // QEMU's default permissions: metadata is always read, written and resized when the node
        // is writable, and never written or resized by others; the backing node is only read.
        var reader = OptionReader(nodeName: "fmt", options: ["file": .string("proto"), "backing": .string("base"), "read-only": .bool(true)])
        let configuration = try Qcow2Node.descriptor.parse(&reader)
        #expect(configuration.readOnly)
        #expect(configuration.children.map(\.role) == [.file, .backing])
        let file = configuration.childPermissions(for: configuration.children[0], parentsTake: [], parentsShare: .all)
        #expect(file.take == [.consistentRead] && file.share == [.consistentRead, .writeUnchanged])
        var writableReader = OptionReader(nodeName: "fmt", options: ["file": .string("proto")])
        let writable = try Qcow2Node.descriptor.parse(&writableReader)
        #expect(!writable.readOnly)
        let writableFile = writable.childPermissions(for: writable.children[0], parentsTake: [], parentsShare: .all)
        #expect(writableFile.take == [.consistentRead, .write, .resize] && writableFile.share == [.consistentRead, .writeUnchanged])
        let backing = configuration.childPermissions(for: configuration.children[1], parentsTake: [.consistentRead], parentsShare: [.consistentRead])
        #expect(backing.take == [.consistentRead] && backing.share == [.consistentRead, .writeUnchanged])
    }

    // MARK: Hostile images

    /// Big-endian patches to a valid image.
    private func patch(_ path: String, at offset: Int, _ value: UInt64, bytes: Int) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        handle.write(Data((0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(bytes - 1 - $0))) }))
    }

    /// The offset of the first header extension of `type` in a v3 image (the walk starts at 112,
    /// QEMU 7.2's header_length).
    private func extensionOffset(_ path: String, type: UInt32) throws -> Int? {
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)).prefix(4096))
        var offset = 112
        while offset + 8 <= bytes.count {
            let found = bytes[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let length = Int(bytes[offset + 4..<offset + 8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            if found == type { return offset }
            if found == 0 { return nil }
            offset += 8 + (length + 7) & ~7
        }
        return nil
    }

    @Test func hostileImagesGiveErrorsNamingTheProblem() async throws {
        let harness = try NodeTestHarness("qcow2bad")
        defer { harness.shutdown() }
        let pristine = harness.path("pristine.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=1.1,cluster_size=65536", pristine, "16M"])
        try await qemuIO(pristine, ["write -P 0x5a 0 64k"])
        let featureTable = try #require(try extensionOffset(pristine, type: 0x6803_f857))

        let cases: [(String, (String) throws -> Void, String)] = [
            ("truncated header", { try FileHandle(forUpdating: URL(fileURLWithPath: $0)).truncate(atOffset: 50) }, "too short for a qcow2 header"),
            ("bad magic", { try self.patch($0, at: 0, 0x5146_49fc, bytes: 4) }, "bad magic"),
            ("version 4", { try self.patch($0, at: 4, 4, bytes: 4) }, "Unsupported qcow2 version 4"),
            ("cluster_bits 30", { try self.patch($0, at: 20, 30, bytes: 4) }, "field 'cluster_bits' is 30"),
            ("crypt_method 1", { try self.patch($0, at: 32, 1, bytes: 4) }, "encrypted images are not supported"),
            ("l1_size huge", { try self.patch($0, at: 36, 0xffff_ffff, bytes: 4) }, "field 'l1_size' (4294967295) is too large"),
            ("l1_size too small", { try self.patch($0, at: 36, 0, bytes: 4) }, "field 'l1_size' (0) is too small"),
            ("l1 past the end", { try self.patch($0, at: 40, 1 << 40, bytes: 8) }, "field 'l1_table_offset' (1099511627776) with 8 bytes lies past the end of the file"),
            ("l1 over the header", { try self.patch($0, at: 40, 0, bytes: 8) }, "field 'l1_table_offset' (0) overlaps the header"),
            ("l1 misaligned", { try self.patch($0, at: 40, 65537, bytes: 8) }, "field 'l1_table_offset' (65537) is not aligned"),
            ("refcount table past the end", { try self.patch($0, at: 48, 1 << 40, bytes: 8) }, "field 'refcount_table_offset'"),
            ("snapshots", { try self.patch($0, at: 60, 1 << 20, bytes: 4) }, "field 'nb_snapshots' (1048576) is too large"),
            ("unknown incompatible bit", { try self.patch($0, at: 72, 1 << 20, bytes: 8) }, "Unsupported incompatible features: bit 20"),
            ("unknown bit named by the table", {
                // The table's first entry is "dirty bit" (type 0, bit 0): make it name bit 21 instead.
                try self.patch($0, at: featureTable + 8 + 1, 21, bytes: 1)
                try self.patch($0, at: 72, 1 << 21, bytes: 8)
            }, "Unsupported incompatible features: bit 21 (dirty bit)"),
            ("external data file not given", { try self.patch($0, at: 72, 1 << 2, bytes: 8) }, "give 'data-file'"),
            ("data-file-raw without a data file", { try self.patch($0, at: 88, 1 << 1, bytes: 8) }, "data-file-raw requires a data file"),
            ("unknown compression type", {
                try self.patch($0, at: 72, 1 << 3, bytes: 8)
                try self.patch($0, at: 104, 2, bytes: 1)
            }, "unknown compression type 2"),
            ("refcount_order 7", { try self.patch($0, at: 96, 7, bytes: 4) }, "field 'refcount_order' is 7"),
            ("header_length", { try self.patch($0, at: 100, 1 << 20, bytes: 4) }, "field 'header_length' (1048576) exceeds"),
            ("extension length past the end", { try self.patch($0, at: featureTable + 4, 0x00ff_fff0, bytes: 4) }, "has length 16777200, past the end of the header area"),
            ("backing name too long", {
                try self.patch($0, at: 8, 4000, bytes: 8)
                try self.patch($0, at: 16, 5000, bytes: 4)
            }, "field 'backing_file_size' (5000) is longer than 1023"),
            ("backing name past the cluster", {
                try self.patch($0, at: 8, 65500, bytes: 8)
                try self.patch($0, at: 16, 100, bytes: 4)
            }, "field 'backing_file_offset' (65500) with size 100 lies outside the first cluster"),
        ]
        for (index, (label, damage, expected)) in cases.enumerated() {
            let image = harness.path("bad\(index).qcow2")
            try FileManager.default.copyItem(atPath: pristine, toPath: image)
            try damage(image)
            let file = try await openFile(harness, image, name: "proto")
            let error = await harness.openError(Qcow2Node.descriptor, name: "fmt", options: ["file": .string("proto")],
                                                children: [Self.fileLink: file])
            #expect(error?.hasPrefix("Could not open node 'fmt': qcow2: ") == true, "\(label): got \(error ?? "no error")")
            #expect(error?.contains(expected) == true, "\(label): got \(error ?? "no error")")
            await file.close()
        }
    }

    /// Flags that do not stop reading are reported; damaged mappings fail the request, not the process.
    @Test func flagsAreReportedAndBadMappingsFailWithEIO() async throws {
        let harness = try NodeTestHarness("qcow2flags")
        defer { harness.shutdown() }
        let image = harness.path("flags.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", image, "4M"])
        try await qemuIO(image, ["write -P 0x5a 0 64k"])
        try patch(image, at: 72, 0b11, bytes: 8)  // dirty and corrupt
        let flagged = try await openImage(harness, image)
        #expect(flagged.qcow2.isDirty && flagged.qcow2.isCorrupt)
        #expect(await read(harness, flagged.node, offset: 0, count: 65536).1.allSatisfy { $0 == 0x5a })
        await flagged.close()

        // Point the first L1 entry past the end of the file, then at a misaligned table.
        let l1Offset = try Data(contentsOf: URL(fileURLWithPath: image))[40..<48].reduce(0) { $0 << 8 | Int($1) }
        for entry in [UInt64(1) << 63 | 1 << 40, UInt64(1) << 63 | 65536 + 512] {
            try patch(image, at: l1Offset, entry, bytes: 8)
            let stack = try await openImage(harness, image)
            #expect(await read(harness, stack.node, offset: 0, count: 4096).0 == .ioError)
            await stack.close()
        }
    }
}
