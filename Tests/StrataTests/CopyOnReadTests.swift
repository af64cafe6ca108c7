import Foundation
import StrataEngine
import StrataGraph
import StrataImageTools
import StrataNodes
import StrataRuntime
import Testing

/// The copy-on-read filter over qcow2 chains qemu-img and qemu-io make: data read through it
/// lands in the top image (qemu-img map shows it at depth 0, check finds nothing, compare finds
/// the chain unchanged), a second read stays off the backing file, and `bottom` bounds what is copied.
@Suite(.serialized) struct CopyOnReadTests {
    let harness: NodeTestHarness

    init() throws { harness = try NodeTestHarness("cor") }

    func tool(_ name: String, _ arguments: [String]) async throws -> QemuTool.Result {
        let result = try await QemuTool.run(name, arguments)
        #expect(result.status == 0, "\(name) \(arguments): \(result.output)")
        return result
    }

    /// Inserts a copy-on-read node above the session's top image.
    func insertFilter(_ session: ImageSession, bottom: String? = nil) async throws {
        var filter: [String: JSONValue] = ["driver": "copy-on-read", "node-name": "cor"]
        if let bottom { filter["bottom"] = .string(bottom) }
        try await session.engine.controller.apply(json: .object([
            "type": "insert-filter", "data": .object(["above": "img0", "filter": .object(filter)]),
        ]))
    }

    /// qemu-img map's JSON entries as (start, length, depth, data).
    func map(_ image: String) async throws -> [(start: Int, length: Int, depth: Int, data: Bool)] {
        let output = try await tool("qemu-img", ["map", "--output=json", image]).output
        let entries = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]] ?? []
        return entries.map { ($0["start"] as? Int ?? -1, $0["length"] as? Int ?? -1, $0["depth"] as? Int ?? -1, $0["data"] as? Bool ?? false) }
    }

    /// The depth qemu-img map reports for the byte at `offset`.
    func depth(at offset: Int, in entries: [(start: Int, length: Int, depth: Int, data: Bool)]) -> Int? {
        entries.first { $0.start <= offset && offset < $0.start + $0.length }?.depth
    }

    func read(_ session: ImageSession, _ buffer: AlignedBuffer, at offset: UInt64) async -> IOStatus {
        await session.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: buffer.count, buffer: buffer.io))
    }

    @Test func readsCopyBackingDataIntoTheOverlay() async throws {
        defer { harness.shutdown() }
        let base = harness.path("base.qcow2")
        let top = harness.path("top.qcow2")
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
        _ = try await tool("qemu-io", ["-c", "write -P 0x11 0 128k", "-c", "write -P 0x22 1M 64k", base])
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top])
        let session = try await ImageSession.open(top)
        try await insertFilter(session)
        let baseFile = try #require(session.fileState(depth: 1) as? FileNodeState)

        // Unaligned to clusters: whole clusters are copied, the requested bytes returned.
        let buffer = AlignedBuffer(count: 196608 - 4096)
        #expect(await read(session, buffer, at: 4096) == .ok)
        #expect(buffer.firstMismatch(0x11, in: 0..<(131072 - 4096)) == nil)
        #expect(buffer.firstMismatch(0, in: (131072 - 4096)..<buffer.count) == nil)
        let second = AlignedBuffer(count: 65536)
        #expect(await read(session, second, at: 1 << 20) == .ok)
        #expect(second.firstMismatch(0x22, in: 0..<65536) == nil)

        // Now the overlay holds it: reading again does not reach the backing file.
        let readsBefore = baseFile.counters.reads
        let again = AlignedBuffer(count: 196608)
        #expect(await read(session, again, at: 0) == .ok)
        #expect(again.firstMismatch(0x11, in: 0..<131072) == nil)
        #expect(again.firstMismatch(0, in: 131072..<196608) == nil)
        #expect(await read(session, second, at: 1 << 20) == .ok)
        #expect(second.firstMismatch(0x22, in: 0..<65536) == nil)
        #expect(baseFile.counters.reads == readsBefore)

        // Writes pass through the filter.
        let data = AlignedBuffer(count: 4096, filledWith: 0x44)
        #expect(await session.submit(BlockRequest(operation: .write, offsetBytes: 3 << 20, lengthBytes: 4096, buffer: data.io)) == .ok)
        #expect(await session.close() == .ok)

        let entries = try await map(top)
        for offset in [0, 65536, 131072, 1 << 20, 3 << 20] {
            #expect(depth(at: offset, in: entries) == 0, "offset \(offset): \(entries)")
        }
        #expect(depth(at: 2 << 20, in: entries) == 1)
        let check = try await tool("qemu-img", ["check", top])
        #expect(check.output.contains("No errors were found"), "\(check.output)")
        _ = try await tool("qemu-io", ["-c", "write -P 0x44 3M 4k", base])
        _ = try await tool("qemu-img", ["compare", top, base])
        // The copies live in the overlay: the backing file's data may go and they stay.
        _ = try await tool("qemu-io", ["-c", "write -P 0x99 0 4M", base])
        _ = try await tool("qemu-io", ["-c", "read -P 0x11 0 128k", "-c", "read -P 0 128k 64k", "-c", "read -P 0x22 1M 64k", top])
    }

    @Test func bottomLimitsWhatIsCopied() async throws {
        defer { harness.shutdown() }
        let base = harness.path("base.qcow2")
        let mid = harness.path("mid.qcow2")
        let top = harness.path("top.qcow2")
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
        _ = try await tool("qemu-io", ["-c", "write -P 0x11 0 64k", base])
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid])
        _ = try await tool("qemu-io", ["-c", "write -P 0x22 1M 64k", mid])
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top])
        let session = try await ImageSession.open(top)
        // img1 is mid's node: data from mid is copied, data only in base is not.
        try await insertFilter(session, bottom: "img1")
        let buffer = AlignedBuffer(count: 2 << 20)
        #expect(await read(session, buffer, at: 0) == .ok)
        #expect(buffer.firstMismatch(0x11, in: 0..<65536) == nil)
        #expect(buffer.firstMismatch(0x22, in: (1 << 20)..<((1 << 20) + 65536)) == nil)
        #expect(buffer.firstMismatch(0, in: 65536..<(1 << 20)) == nil)
        #expect(await session.close() == .ok)

        let entries = try await map(top)
        #expect(depth(at: 1 << 20, in: entries) == 0, "\(entries)")
        #expect(depth(at: 0, in: entries) == 2, "\(entries)")
        // Nothing else was copied: zeros no layer holds stay unallocated.
        #expect(entries.filter { $0.depth == 0 }.map(\.length).reduce(0, +) == 65536, "\(entries)")
        let check = try await tool("qemu-img", ["check", top])
        #expect(check.output.contains("No errors were found"), "\(check.output)")
        _ = try await tool("qemu-img", ["compare", top, mid])
    }

    @Test func bottomOutsideTheChainAndReadOnlyImagesAreRefused() async throws {
        defer { harness.shutdown() }
        let base = harness.path("base.qcow2")
        let top = harness.path("top.qcow2")
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"])
        _ = try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top])
        let session = try await ImageSession.open(top)
        await #expect(throws: GraphError.self) { try await insertFilter(session, bottom: "img0") }
        await #expect(throws: GraphError.self) { try await insertFilter(session, bottom: "nowhere") }
        #expect(await session.close() == .ok)
        // Copies are writes: a read-only image cannot take them (QEMU: "Block node is read-only").
        let readOnly = try await ImageSession.open(top, options: ImageOpenOptions(readOnly: true))
        await #expect(throws: GraphError.self) { try await insertFilter(readOnly) }
        await readOnly.close()
    }
}
