import Foundation
import StrataEngine
import StrataGraph
import StrataImageTools
import StrataNodes
import Testing

/// ImageSession against images qemu-img and qemu-io make: probing, backing chains by name,
/// read-only and cache modes, block status through the chain, resize.
@Suite(.serialized) struct ImageSessionTests {
    let harness: NodeTestHarness

    init() throws { harness = try NodeTestHarness("imgsession") }

    func qemuImg(_ arguments: [String]) async throws {
        let result = try await QemuTool.run("qemu-img", arguments)
        #expect(result.status == 0, "qemu-img \(arguments): \(result.output)")
    }

    func qemuIo(_ arguments: [String]) async throws {
        let result = try await QemuTool.run("qemu-io", arguments)
        #expect(result.status == 0, "qemu-io \(arguments): \(result.output)")
    }

    @Test func rawImageReadsWritesAndMapsHoles() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 1 << 20)
        let session = try await ImageSession.open(path, options: ImageOpenOptions(cacheMode: "none"))
        #expect(session.format == "raw")
        #expect(session.sizeBytes == 1 << 20)
        let buffer = AlignedBuffer(count: 8192, filledWith: 0x5a)
        #expect(await session.submit(BlockRequest(operation: .write, offsetBytes: 65536, lengthBytes: 8192, buffer: buffer.io)) == .ok)
        // Past the end: the BlockBackend's EIO, before any node.
        #expect(await session.submit(BlockRequest(operation: .read, offsetBytes: 1 << 20, lengthBytes: 512, buffer: buffer.io)) == .ioError)
        let hole = try await session.blockStatus(offsetBytes: 0, maxLengthBytes: 1 << 20)
        #expect(hole == BlockStatusExtent(lengthBytes: 65536, isData: false, isZero: true, isAllocated: true, hostOffset: 0, depth: 0))
        let data = try await session.blockStatus(offsetBytes: 65536, maxLengthBytes: 1 << 20)
        #expect(data.isData && !data.isZero && data.lengthBytes == 8192 && data.hostOffset == 65536)
        try await session.resize(to: 2 << 20)
        #expect(session.sizeBytes == 2 << 20)
        #expect(await session.close() == .ok)
        try await qemuIo(["-f", "raw", "-c", "read -P 0x5a 64k 8k", "-c", "read -P 0 1M 1M", path])
    }

    @Test func qcow2ChainIsOpenedByNameAndReadThrough() async throws {
        defer { harness.shutdown() }
        let base = harness.path("base.qcow2")
        let top = harness.path("top.qcow2")
        try await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"])
        try await qemuIo(["-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 64k", base])
        // A relative backing name: resolved against the top image's directory.
        try await qemuImg(["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top])
        try await qemuIo(["-c", "write -P 0x33 64k 64k", top])
        let probe = try ImageProbe.probe(path: top)
        #expect(probe.format == .qcow2 && probe.backingFileName == "base.qcow2" && probe.backingFormat == "qcow2")
        let session = try await ImageSession.open(top)
        #expect(session.layers.map(\.format) == ["qcow2", "qcow2"])
        #expect(session.layers[1].filename == harness.directory + "/base.qcow2")
        let buffer = AlignedBuffer(count: 3 * 65536)
        #expect(await session.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: buffer.count, buffer: buffer.io)) == .ok)
        #expect(buffer.firstMismatch(0x11, in: 0..<65536) == nil)
        #expect(buffer.firstMismatch(0x33, in: 65536..<131072) == nil)
        #expect(buffer.firstMismatch(0, in: 131072..<196608) == nil)
        #expect(await session.close() == .ok)
    }

    @Test func readOnlyAndForcedFormat() async throws {
        defer { harness.shutdown() }
        let path = harness.path("img.qcow2")
        try await qemuImg(["create", "-q", "-f", "qcow2", path, "1M"])
        // -f raw over a qcow2 file: its bytes as they are, header included.
        let raw = try await ImageSession.open(path, options: ImageOpenOptions(format: "raw", readOnly: true))
        #expect(raw.format == "raw" && raw.isReadOnly)
        let buffer = AlignedBuffer(count: 4096)
        #expect(await raw.submit(BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)) == .ok)
        #expect(Array(buffer.bytes.prefix(4)) == [0x51, 0x46, 0x49, 0xfb])
        #expect(await raw.submit(BlockRequest(operation: .write, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)) == .readOnly)
        await raw.close()
        await #expect(throws: (any Error).self) { try await ImageSession.open(path, options: ImageOpenOptions(cacheMode: "sometimes")) }
        await #expect(throws: (any Error).self) { try await ImageSession.open(harness.path("missing.img")) }
    }
}
