import StrataGraph
import StrataNodes
import StrataRuntime
import Testing

@Suite struct RawNodeTests {
    private static let fileLink = ChildLink(role: .file, optionKey: "file", nodeName: "proto")

    /// A file node over a fresh 1 MiB file, filled by qemu-io with 0x11, and a raw node with `options` over it.
    private func openStack(_ harness: NodeTestHarness, _ options: [String: JSONValue]) async throws
        -> (file: any NodeState, fileNode: any BlockNode, raw: any NodeState, rawNode: any BlockNode, path: String) {
        let path = try harness.createFile("raw-\(options.count).img", size: 1 << 20)
        #expect(try await QemuTool.io("write -P 0x11 0 1048576", path))
        let file = try await harness.open(FileNode.descriptor, name: "proto", options: ["filename": .string(path)])
        let fileNode = harness.instance(file)
        var rawOptions = options
        rawOptions["file"] = .string("proto")
        let raw = try await harness.open(RawNode.descriptor, name: "fmt", options: rawOptions, children: [Self.fileLink: file])
        let rawNode = harness.instance(raw, children: [Self.fileLink: fileNode])
        return (file, fileNode, raw, rawNode, path)
    }

    @Test func withoutAWindowEverythingPassesThrough() async throws {
        let harness = try NodeTestHarness("rawplain")
        defer { harness.shutdown() }
        let stack = try await openStack(harness, [:])
        #expect(stack.raw.sizeBytes == 1 << 20)
        let buffer = TestBuffer(count: 4096, filledWith: 0x22)
        #expect(await harness.write(stack.rawNode, buffer, at: 8192) == .ok)
        #expect(await harness.flush(stack.rawNode) == .ok)
        let check = TestBuffer(count: 4096)
        #expect(await harness.read(stack.fileNode, check, at: 8192) == .ok)
        #expect(check.allEqual(0x22))

        // The window follows the child's size.
        let file = try #require(stack.file as? FileNodeState)
        try await file.resize(to: 2 << 20)
        #expect(stack.raw.sizeBytes == 2 << 20)

        var reader = OptionReader(nodeName: "fmt", options: ["file": .string("proto")])
        let configuration = try RawNode.descriptor.parse(&reader)
        let permissions = configuration.childPermissions(for: Self.fileLink, parentsTake: [.consistentRead, .write], parentsShare: .all)
        #expect(permissions.take == [.consistentRead, .write])
        #expect(permissions.share == .all)
        await stack.file.close()
    }

    @Test func windowShiftsRequestsByTheOffset() async throws {
        let harness = try NodeTestHarness("rawwindow")
        defer { harness.shutdown() }
        let stack = try await openStack(harness, ["offset": .int(65536), "size": .int(131072)])
        #expect(stack.raw.sizeBytes == 131072)

        let buffer = TestBuffer(count: 4096, filledWith: 0x33)
        #expect(await harness.write(stack.rawNode, buffer, at: 0) == .ok)
        #expect(await harness.write(stack.rawNode, TestBuffer(count: 512, filledWith: 0x44), at: 131072 - 512) == .ok)
        #expect(await harness.submit(stack.rawNode, BlockRequest(operation: .writeZeroes, offsetBytes: 8192, lengthBytes: 4096)) == .ok)

        // Seen through the child: shifted by the offset, and nothing outside the window touched.
        let child = TestBuffer(count: 65536 + 131072 + 4096)
        #expect(await harness.read(stack.fileNode, child, at: 0) == .ok)
        #expect(child.allEqual(0x11, to: 65536))
        #expect(child.allEqual(0x33, from: 65536, to: 65536 + 4096))
        #expect(child.allEqual(0x11, from: 65536 + 4096, to: 65536 + 8192))
        #expect(child.allEqual(0, from: 65536 + 8192, to: 65536 + 12288))
        #expect(child.allEqual(0x44, from: 65536 + 131072 - 512, to: 65536 + 131072))
        #expect(child.allEqual(0x11, from: 65536 + 131072))

        // Reads through the window see the child's bytes at the shifted place.
        let back = TestBuffer(count: 8192)
        #expect(await harness.read(stack.rawNode, back, at: 0) == .ok)
        #expect(back.allEqual(0x33, to: 4096))
        #expect(back.allEqual(0x11, from: 4096))
        await stack.file.close()
        #expect(try await QemuTool.io("read -P 0x33 65536 4096", stack.path))
    }

    /// QEMU's raw_adjust_offset: a write that leaves the window is ENOSPC, anything else EINVAL.
    @Test func requestsOutsideTheWindowFail() async throws {
        let harness = try NodeTestHarness("rawoob")
        defer { harness.shutdown() }
        let stack = try await openStack(harness, ["offset": .int(4096), "size": .int(8192)])
        let buffer = TestBuffer(count: 1024, filledWith: 0x55)
        #expect(await harness.write(stack.rawNode, buffer, at: 8192 - 512) == .noSpace)
        #expect(await harness.read(stack.rawNode, buffer, at: 8192 - 512) == .invalid)
        #expect(await harness.read(stack.rawNode, buffer, at: 1 << 30) == .invalid)
        #expect(await harness.submit(stack.rawNode, BlockRequest(operation: .discard, offsetBytes: 4096, lengthBytes: 8192)) == .noSpace)
        #expect(await harness.submit(stack.rawNode, BlockRequest(operation: .read, offsetBytes: .max - 4, lengthBytes: 16, buffer: buffer.io)) == .invalid)
        // Nothing leaked into the child past the window.
        let child = TestBuffer(count: 4096)
        #expect(await harness.read(stack.fileNode, child, at: 4096 + 8192) == .ok)
        #expect(child.allEqual(0x11))

        // A window keeps others from resizing the child under it.
        var reader = OptionReader(nodeName: "fmt", options: ["file": .string("proto"), "offset": .int(4096)])
        let configuration = try RawNode.descriptor.parse(&reader)
        let permissions = configuration.childPermissions(for: Self.fileLink, parentsTake: [.consistentRead], parentsShare: .all)
        #expect(permissions.take == [.consistentRead])
        #expect(permissions.share == [.consistentRead, .write, .writeUnchanged])
        await stack.file.close()
    }

    @Test func readOnlyRefusesWrites() async throws {
        let harness = try NodeTestHarness("rawro")
        defer { harness.shutdown() }
        let stack = try await openStack(harness, ["read-only": .bool(true)])
        #expect(await harness.write(stack.rawNode, TestBuffer(count: 512), at: 0) == .readOnly)
        #expect(await harness.read(stack.rawNode, TestBuffer(count: 512), at: 0) == .ok)
        await stack.file.close()
    }

    @Test func badWindowOptionsGiveErrorsNamingTheOption() async throws {
        let harness = try NodeTestHarness("rawopts")
        defer { harness.shutdown() }
        let path = try harness.createFile("child.img", size: 65536)
        let file = try await harness.open(FileNode.descriptor, name: "proto", options: ["filename": .string(path)])
        let children: [ChildLink: any NodeState] = [Self.fileLink: file]
        let cases: [([String: JSONValue], String)] = [
            ([:], "fmt: Parameter 'file' is missing"),
            (["file": .int(1)], "fmt: Parameter 'file' expects a node name"),
            (["file": .string("proto"), "size": .int(1000)], "fmt: Parameter 'size' is not a multiple of 512 (got 1000)"),
            (["file": .string("proto"), "size": .int(-512)], "fmt: Parameter 'size' must be between 0 and"),
            (["file": .string("proto"), "offset": .int(-1)], "fmt: Parameter 'offset' must be between 0 and"),
            (["file": .string("proto"), "offset": .string("far")], "fmt: Parameter 'offset' expects a number, got 'far'"),
            (["file": .string("proto"), "offset": .int(65537)], "fmt: Parameter 'offset' (65537) cannot be greater than size of the containing file (65536)"),
            (["file": .string("proto"), "offset": .int(512), "size": .int(65536)], "fmt: Parameter 'size' (65536) plus offset (512) has to be smaller or equal to the actual size of the containing file (65536)"),
            (["file": .string("proto"), "filename": .string("x")], "fmt: Parameter 'filename' is unexpected"),
        ]
        for (options, expected) in cases {
            let error = await harness.openError(RawNode.descriptor, name: "fmt", options: options, children: children)
            #expect(error?.hasPrefix(expected) == true, "\(options): got \(error ?? "no error")")
        }
        // Offset equal to the child's size is an empty window, as in QEMU.
        let empty = try await harness.open(RawNode.descriptor, name: "fmt", options: ["file": .string("proto"), "offset": .int(65536)], children: children)
        #expect(empty.sizeBytes == 0)
        await file.close()
    }
}
