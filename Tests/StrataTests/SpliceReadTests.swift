import Foundation
import Glibc
import StrataEngine
import StrataGraph
import StrataImageTools
import StrataNodes
import StrataRuntime
import Testing

/// `spliceRead` (the NBD server's zero-copy path): the file node and qcow2's plain data clusters
/// move exactly the bytes a read returns into a pipe; everything that cannot be spliced answers
/// ENOTSUP before a byte moves, so the caller can read normally with the pipe still clean.
@Suite(.serialized) struct SpliceReadTests {
    let harness: NodeTestHarness

    init() throws { harness = try NodeTestHarness("splice") }

    /// A pipe big enough for `bytes`; closed by the caller.
    private func makePipe(holding bytes: Int) throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        try #require(pipe(&fds) == 0)
        let setPipeSize: Int32 = 1031  // F_SETPIPE_SZ, which Glibc does not export to Swift
        #expect(fcntl(fds[1], setPipeSize, Int32(bytes)) >= bytes)
        return (fds[0], fds[1])
    }

    /// Bytes waiting in the pipe (none left behind: a non-blocking read then finds it empty).
    private func drain(_ pipe: (read: Int32, write: Int32), count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes { read(pipe.read, $0.baseAddress! + done, count - done) }
            if got <= 0 { break }
            done += got
        }
        _ = fcntl(pipe.read, F_SETFL, O_NONBLOCK)
        var extra: UInt8 = 0
        #expect(read(pipe.read, &extra, 1) == -1, "the pipe holds more than the range")
        return Array(bytes[..<done])
    }

    private func readNormally(_ session: ImageSession, offset: UInt64, length: Int) async -> [UInt8] {
        let buffer = AlignedBuffer(count: length)
        #expect(await session.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length, buffer: buffer.io)) == .ok)
        return Array(buffer.bytes)
    }

    @Test func rawFileSplicesWhatReadsReturnAndRefusesDirect() async throws {
        defer { harness.shutdown() }
        let path = harness.path("data.raw")
        var random = SeededRandom(state: 7)
        let content = (0..<(4 << 20)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        try Data(content).write(to: URL(fileURLWithPath: path))
        let session = try await ImageSession.open(path, options: ImageOpenOptions(format: "raw", readOnly: true))
        let pipe = try makePipe(holding: 1 << 20)
        defer { close(pipe.read); close(pipe.write) }
        for (offset, length) in [(0, 65536), (12345, 300_001), (3 << 20, 1 << 20)] {
            let status = await session.submit(BlockRequest(operation: .spliceRead, offsetBytes: UInt64(offset), lengthBytes: length, pipeFd: pipe.write))
            #expect(status == .ok)
            #expect(drain(pipe, count: length) == Array(content[offset..<offset + length]))
            _ = fcntl(pipe.read, F_SETFL, 0)
        }
        await session.close()

        let direct = try await ImageSession.open(path, options: ImageOpenOptions(format: "raw", readOnly: true, cacheMode: "none"))
        #expect(await direct.submit(BlockRequest(operation: .spliceRead, offsetBytes: 0, lengthBytes: 65536, pipeFd: pipe.write)) == .notSupported)
        await direct.close()
    }

    @Test func qcow2SplicesDataClustersOnlyAndLeavesThePipeCleanOtherwise() async throws {
        defer { harness.shutdown() }
        let path = harness.path("mixed.qcow2")
        _ = try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", path, "8M"])
        _ = try await QemuTool.require("qemu-io", ["-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 2M 128k", "-c", "write -z 1M 64k",
                                                   "-c", "write -c -P 0x33 4M 64k", path])
        let session = try await ImageSession.open(path, options: ImageOpenOptions(readOnly: true))
        let pipe = try makePipe(holding: 1 << 20)
        defer { close(pipe.read); close(pipe.write) }
        // Plain data clusters, one run in the file and across two runs.
        for (offset, length) in [(4096, 500_000), (2 << 20, 128 << 10)] {
            let status = await session.submit(BlockRequest(operation: .spliceRead, offsetBytes: UInt64(offset), lengthBytes: length, pipeFd: pipe.write))
            #expect(status == .ok)
            #expect(drain(pipe, count: length) == (await readNormally(session, offset: UInt64(offset), length: length)))
            _ = fcntl(pipe.read, F_SETFL, 0)
        }
        // A zero cluster, an unallocated one, a compressed one: refused, nothing in the pipe.
        for (offset, length) in [(960 << 10, 128 << 10), (3 << 20, 65536), (4 << 20, 65536)] {
            let status = await session.submit(BlockRequest(operation: .spliceRead, offsetBytes: UInt64(offset), lengthBytes: length, pipeFd: pipe.write))
            #expect(status == .notSupported, "splice of \(offset)+\(length)")
            #expect(drain(pipe, count: 0) == [])
            _ = fcntl(pipe.read, F_SETFL, 0)
        }
        await session.close()
    }
}
