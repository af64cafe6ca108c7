import Foundation
import Glibc
import StrataGraph
import StrataNodes
import StrataRuntime
import Testing

@Suite struct FileNodeTests {
    private static let mebibyte = 1 << 20

    private func openFile(_ harness: NodeTestHarness, _ path: String, name: String = "file0",
                          _ options: [String: JSONValue] = [:]) async throws -> (FileNodeState, any BlockNode) {
        var all = options
        all["filename"] = .string(path)
        let state = try await harness.open(FileNode.descriptor, name: name, options: all)
        let file = try #require(state as? FileNodeState)
        return (file, harness.instance(file))
    }

    // MARK: Data integrity against QEMU's own tools

    @Test(arguments: ["none", "writeback"])
    func patternsWrittenThroughTheNodeAreWhatQemuIOReads(cache: String) async throws {
        let harness = try NodeTestHarness("fint-\(cache)")
        defer { harness.shutdown() }
        let path = try harness.createFile("image.raw", size: 4 * Self.mebibyte)
        #expect(try await QemuTool.io("write -P 0x5a 1048576 65536", path))

        let (state, node) = try await openFile(harness, path, ["cache": .string(cache)])
        #expect(state.direct == (cache == "none"))
        #expect(state.sizeBytes == UInt64(4 * Self.mebibyte))

        let fromQemu = TestBuffer(count: 65536, filledWith: 0xFF)
        #expect(await harness.read(node, fromQemu, at: 1 << 20) == .ok)
        #expect(fromQemu.allEqual(0x5A))

        let patterns: [(offset: UInt64, length: Int, byte: UInt8)] = [
            (0, 4096, 0x11), (8192, 65536, 0x22), (2 << 20, 1536, 0x33), ((3 << 20) + 4096, 131072, 0x44),
        ]
        for pattern in patterns {
            let buffer = TestBuffer(count: pattern.length, filledWith: pattern.byte)
            #expect(await harness.write(node, buffer, at: pattern.offset) == .ok)
        }
        #expect(await harness.flush(node) == .ok)
        #expect(state.counters.writes == UInt64(patterns.count))
        #expect(state.counters.bytesWritten == UInt64(patterns.reduce(0) { $0 + $1.length }))
        await state.close()

        for pattern in patterns {
            let command = "read -P 0x\(String(pattern.byte, radix: 16)) \(pattern.offset) \(pattern.length)"
            #expect(try await QemuTool.io(command, path), "\(command)")
        }
        #expect(try await QemuTool.io("read -P 0x5a 1048576 65536", path))
    }

    @Test func readsPastTheEndOfTheFileReturnZeros() async throws {
        let harness = try NodeTestHarness("feof")
        defer { harness.shutdown() }
        let path = try harness.createFile("short.raw", size: 5000)
        #expect(try await QemuTool.io("write -P 0x77 0 5000", path))
        let (state, node) = try await openFile(harness, path)
        #expect(state.sizeBytes == 5000)
        let buffer = TestBuffer(count: 8192, filledWith: 0xFF)
        #expect(await harness.read(node, buffer, at: 0) == .ok)
        #expect(buffer.allEqual(0x77, to: 5000))
        #expect(buffer.allEqual(0, from: 5000))
        await state.close()
    }

    // MARK: O_DIRECT bounce buffers

    @Test func misalignedDirectRequestsGoThroughBounceBuffers() async throws {
        let harness = try NodeTestHarness("fbounce")
        defer { harness.shutdown() }
        let size = 2 * Self.mebibyte
        let path = try harness.createFile("direct.raw", size: size)
        #expect(try await QemuTool.io("write -P 0xee 0 \(size)", path))
        let (state, node) = try await openFile(harness, path, ["cache": .string("none")])
        #expect(state.direct)

        // Aligned memory, offset and length go straight to the file.
        let aligned = TestBuffer(count: 8192)
        #expect(await harness.read(node, aligned, at: 1 << 20) == .ok)
        #expect(aligned.allEqual(0xEE))
        #expect(state.counters.bouncedRequests == 0)

        // Memory, offset and length misaligned in turn; one larger than a pool buffer (256 KiB);
        // one aligned to 512 but not to 4096. None overlap, and each has untouched neighbours.
        let requests: [(offset: UInt64, length: Int, misalignment: Int, byte: UInt8)] = [
            (1000, 5000, 3, 0xA1),
            (20481, 777, 1, 0xA2),
            (600_001, 700_000, 5, 0xA3),
            (1_401_344, 1536, 512, 0xA4),
            (1_500_000, 4096, 0, 0xA5),
            (1_601_536, 8192, 7, 0xA6),
        ]
        for request in requests {
            let buffer = TestBuffer(count: request.length, misalignment: request.misalignment, filledWith: request.byte)
            #expect(await harness.write(node, buffer, at: request.offset) == .ok)
        }
        for request in requests {
            let buffer = TestBuffer(count: request.length + 2, misalignment: request.misalignment + 1)
            #expect(await harness.read(node, buffer, at: request.offset - 1) == .ok)
            #expect(buffer.bytes.first == 0xEE, "byte before \(request.offset)")
            #expect(buffer.allEqual(request.byte, from: 1, to: request.length + 1), "data at \(request.offset)")
            #expect(buffer.bytes.last == 0xEE, "byte after \(request.offset)")
        }
        #expect(state.counters.bouncedRequests >= UInt64(requests.count))

        // Reading across the end through the bounce path.
        let tail = TestBuffer(count: 300, misalignment: 9)
        #expect(await harness.read(node, tail, at: UInt64(size - 100)) == .ok)
        #expect(tail.allEqual(0xEE, to: 100))
        #expect(tail.allEqual(0, from: 100))
        await state.close()

        for request in requests {
            let command = "read -P 0x\(String(request.byte, radix: 16)) \(request.offset) \(request.length)"
            #expect(try await QemuTool.io(command, path), "\(command)")
        }
        #expect(try await QemuTool.io("read -P 0xee 0 1000", path))
        #expect(try await QemuTool.io("read -P 0xee 6000 14481", path))
    }

    /// More misaligned requests in flight at once than the pool has buffers (4): the extra ones
    /// bounce through temporary buffers. The requests touch disjoint blocks, as the
    /// read-modify-write is not serialised against overlapping requests.
    @Test func concurrentMisalignedRequestsOutnumberingThePool() async throws {
        let harness = try NodeTestHarness("fconc")
        defer { harness.shutdown() }
        let path = try harness.createFile("conc.raw", size: Self.mebibyte)
        let (state, node) = try await openFile(harness, path, ["cache": .string("none")])
        let count = 16
        let buffers = (0..<count).map { TestBuffer(count: 3000, misalignment: $0 + 1, filledWith: UInt8(0x20 + $0)) }
        let ios = buffers.map(\.io)
        let statuses = await harness.onQueue { () -> [IOStatus] in
            await withTaskGroup(of: IOStatus.self) { group in
                for index in 0..<count {
                    let request = BlockRequest(operation: .write, offsetBytes: UInt64(index * 16384 + 100), lengthBytes: 3000, buffer: ios[index])
                    group.addTask { await node.submit(request) }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
        }
        #expect(statuses.count == count && statuses.allSatisfy(\.isOK))
        for index in 0..<count {
            let check = TestBuffer(count: 3200, misalignment: 11)
            #expect(await harness.read(node, check, at: UInt64(index * 16384)) == .ok)
            #expect(check.allEqual(0, to: 100))
            #expect(check.allEqual(UInt8(0x20 + index), from: 100, to: 3100), "request \(index)")
            #expect(check.allEqual(0, from: 3100))
        }
        #expect(state.requestAlignment >= 512 && state.memoryAlignment >= 1)
        await state.close()
    }

    // MARK: Cache modes

    @Test func writeThroughFlushesAfterEveryWrite() async throws {
        let harness = try NodeTestHarness("fwt")
        defer { harness.shutdown() }
        let path = try harness.createFile("wt.raw", size: Self.mebibyte)
        let (state, node) = try await openFile(harness, path, ["cache": .string("writethrough")])
        #expect(state.writeThrough && !state.direct && !state.noFlush)
        let buffer = TestBuffer(count: 4096, filledWith: 1)
        for index in 0..<3 {
            #expect(await harness.write(node, buffer, at: UInt64(index * 8192)) == .ok)
            #expect(state.counters.flushes == UInt64(index + 1))
        }
        #expect(state.counters.writes == 3)
        await state.close()
    }

    @Test func directSyncIsDirectAndWriteThrough() async throws {
        let harness = try NodeTestHarness("fds")
        defer { harness.shutdown() }
        let path = try harness.createFile("ds.raw", size: Self.mebibyte)
        let (state, node) = try await openFile(harness, path, ["cache": .string("directsync")])
        #expect(state.direct && state.writeThrough)
        let buffer = TestBuffer(count: 4096, filledWith: 2)
        #expect(await harness.write(node, buffer, at: 0) == .ok)
        #expect(await harness.write(node, buffer, at: 4096) == .ok)
        #expect(state.counters.flushes == 2)
        await state.close()
    }

    @Test func writebackFlushesOnlyWhenAskedAndOnlyWhenDirty() async throws {
        let harness = try NodeTestHarness("fwb")
        defer { harness.shutdown() }
        let path = try harness.createFile("wb.raw", size: Self.mebibyte)
        let (state, node) = try await openFile(harness, path, ["cache": .string("writeback")])
        let buffer = TestBuffer(count: 4096, filledWith: 3)
        for index in 0..<3 { #expect(await harness.write(node, buffer, at: UInt64(index * 4096)) == .ok) }
        #expect(state.counters.flushes == 0)
        #expect(await harness.flush(node) == .ok)
        #expect(state.counters.flushes == 1)
        #expect(await harness.flush(node) == .ok)
        #expect(state.counters.flushes == 1, "nothing written since the last flush")
        // FUA goes out as RWF_DSYNC on the write itself, not as a separate flush.
        #expect(await harness.write(node, buffer, at: 65536, flags: .fua) == .ok)
        #expect(state.counters.flushes == 1)
        await state.close()
        #expect(try await QemuTool.io("read -P 0x03 65536 4096", path))
    }

    @Test func unsafeIgnoresFlushes() async throws {
        let harness = try NodeTestHarness("funsafe")
        defer { harness.shutdown() }
        let path = try harness.createFile("unsafe.raw", size: Self.mebibyte)
        let (state, node) = try await openFile(harness, path, ["cache": .string("unsafe")])
        #expect(state.noFlush && !state.direct && !state.writeThrough)
        let buffer = TestBuffer(count: 4096, filledWith: 4)
        #expect(await harness.write(node, buffer, at: 0) == .ok)
        #expect(await harness.write(node, buffer, at: 4096, flags: .fua) == .ok)
        #expect(await harness.flush(node) == .ok)
        state.setWriteThrough(true)
        #expect(await harness.write(node, buffer, at: 8192) == .ok)
        #expect(state.counters.flushes == 0)
        await state.close()
    }

    @Test func writeThroughCanBeSwitchedAtRuntime() async throws {
        let harness = try NodeTestHarness("ftoggle")
        defer { harness.shutdown() }
        let path = try harness.createFile("toggle.raw", size: Self.mebibyte)
        let (state, node) = try await openFile(harness, path)
        let buffer = TestBuffer(count: 4096, filledWith: 5)
        #expect(!state.writeThrough)
        #expect(await harness.write(node, buffer, at: 0) == .ok)
        #expect(state.counters.flushes == 0)
        state.setWriteThrough(true)
        #expect(state.writeThrough)
        #expect(await harness.write(node, buffer, at: 4096) == .ok)
        #expect(await harness.write(node, buffer, at: 8192) == .ok)
        #expect(state.counters.flushes == 2)
        state.setWriteThrough(false)
        #expect(await harness.write(node, buffer, at: 12288) == .ok)
        #expect(state.counters.flushes == 2)
        await state.close()
    }

    @Test func cacheOptionForms() async throws {
        let harness = try NodeTestHarness("fcacheopts")
        defer { harness.shutdown() }
        let path = try harness.createFile("opts.raw", size: 65536)
        let cases: [([String: JSONValue], direct: Bool, noFlush: Bool, writeThrough: Bool)] = [
            ([:], false, false, false),
            (["cache": .object(["direct": .bool(true), "no-flush": .bool(true)])], true, true, false),
            (["cache.direct": .string("on"), "cache.no-flush": .string("off")], true, false, false),
            (["cache": .string("none"), "cache.direct": .bool(false)], false, false, false),
            (["cache": .string("off")], true, false, false),
            (["cache": .string("writeback"), "cache.writeback": .bool(false)], false, false, true),
        ]
        for (options, direct, noFlush, writeThrough) in cases {
            let (state, _) = try await openFile(harness, path, options)
            #expect(state.direct == direct, "\(options)")
            #expect(state.noFlush == noFlush, "\(options)")
            #expect(state.writeThrough == writeThrough, "\(options)")
            await state.close()
        }
    }

    // MARK: Discard and write-zeroes

    @Test(arguments: ["none", "writeback"])
    func discardAndWriteZeroesReadBackAsZeros(cache: String) async throws {
        let harness = try NodeTestHarness("fzero-\(cache)")
        defer { harness.shutdown() }
        let size = Self.mebibyte
        let path = try harness.createFile("zero.raw", size: size)
        let (state, node) = try await openFile(harness, path, ["cache": .string(cache), "discard": .string("unmap")])
        #expect(await harness.write(node, TestBuffer(count: size, filledWith: 0xAB), at: 0) == .ok)

        func zeroes(_ operation: StrataGraph.BlockOperation, _ offset: UInt64, _ length: Int, _ flags: RequestFlags = []) async -> IOStatus {
            await harness.submit(node, BlockRequest(operation: operation, offsetBytes: offset, lengthBytes: length, flags: flags))
        }
        func expectZeros(_ offset: UInt64, _ length: Int) async {
            let buffer = TestBuffer(count: length + 2, filledWith: 0x55)
            #expect(await harness.read(node, buffer, at: offset - 1) == .ok)
            #expect(buffer.bytes.first == 0xAB, "byte before \(offset)")
            #expect(buffer.allEqual(0, from: 1, to: length + 1), "zeros at \(offset)")
            #expect(buffer.bytes.last == 0xAB, "byte after \(offset)")
        }

        #expect(await zeroes(.discard, 65536, 131072) == .ok)
        await expectZeros(65536, 131072)
        #expect(state.counters.discards == 1)
        #expect(await zeroes(.writeZeroes, 300_007, 10_000) == .ok)
        await expectZeros(300_007, 10_000)
        #expect(await zeroes(.writeZeroes, 524_288, 65536, .mayUnmap) == .ok)
        await expectZeros(524_288, 65536)
        #expect(await zeroes(.writeZeroes, 700_001, 999, [.fua, .noFallback]) == .ok)
        await expectZeros(700_001, 999)
        #expect(state.counters.zeroWrites == 3)

        // Past the end: the file grows and the new range reads as zeros.
        #expect(await zeroes(.writeZeroes, UInt64(size), 8192) == .ok)
        #expect(state.sizeBytes == UInt64(size + 8192))
        let grown = TestBuffer(count: 8192, filledWith: 0x55)
        #expect(await harness.read(node, grown, at: UInt64(size)) == .ok)
        #expect(grown.allEqual(0))

        let fua = TestBuffer(count: 4096, filledWith: 0xCD)
        #expect(await harness.write(node, fua, at: 819_200, flags: .fua) == .ok)
        await state.close()
        #expect(try await QemuTool.io("read -P 0xcd 819200 4096", path))
        #expect(try await QemuTool.io("read -P 0 65536 131072", path))
        #expect(try await QemuTool.io("read -P 0xab 0 65536", path))
    }

    @Test func discardIsIgnoredByDefault() async throws {
        let harness = try NodeTestHarness("fdiscign")
        defer { harness.shutdown() }
        let path = try harness.createFile("ignore.raw", size: 65536)
        let (state, node) = try await openFile(harness, path)
        #expect(await harness.write(node, TestBuffer(count: 65536, filledWith: 0x42), at: 0) == .ok)
        #expect(await harness.submit(node, BlockRequest(operation: .discard, offsetBytes: 0, lengthBytes: 65536)) == .ok)
        let buffer = TestBuffer(count: 65536)
        #expect(await harness.read(node, buffer, at: 0) == .ok)
        #expect(buffer.allEqual(0x42))
        #expect(state.counters.discards == 0)
        await state.close()
    }

    /// tmpfs has no FALLOC_FL_ZERO_RANGE, so write-zeroes there takes the fallback.
    @Test(.enabled(if: FileManager.default.isWritableFile(atPath: "/dev/shm")))
    func writeZeroesFallsBackToZeroBuffersUnlessForbidden() async throws {
        let harness = try NodeTestHarness("ffallback")
        defer { harness.shutdown() }
        let path = "/dev/shm/strata-fallback-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).raw"
        let fd = Glibc.open(path, O_CREAT | O_RDWR | O_TRUNC, 0o644)
        try #require(fd >= 0)
        Glibc.close(fd)
        defer { unlink(path) }
        let (state, node) = try await openFile(harness, path)
        #expect(await harness.write(node, TestBuffer(count: 600_000, filledWith: 0x99), at: 0) == .ok)
        let forbidden = BlockRequest(operation: .writeZeroes, offsetBytes: 1000, lengthBytes: 500_000, flags: .noFallback)
        #expect(await harness.submit(node, forbidden) == .notSupported)
        let allowed = BlockRequest(operation: .writeZeroes, offsetBytes: 1000, lengthBytes: 500_000)
        #expect(await harness.submit(node, allowed) == .ok)
        let buffer = TestBuffer(count: 600_000)
        #expect(await harness.read(node, buffer, at: 0) == .ok)
        #expect(buffer.allEqual(0x99, to: 1000))
        #expect(buffer.allEqual(0, from: 1000, to: 501_000))
        #expect(buffer.allEqual(0x99, from: 501_000))
        await state.close()
    }

    // MARK: Resize

    @Test func resizeChangesTheFileSize() async throws {
        let harness = try NodeTestHarness("fresize")
        defer { harness.shutdown() }
        let path = try harness.createFile("resize.raw", size: 65536)
        let (state, node) = try await openFile(harness, path)
        try await state.resize(to: 3 * 65536)
        #expect(state.sizeBytes == 3 * 65536)
        #expect((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue == 3 * 65536)
        let buffer = TestBuffer(count: 65536, filledWith: 0x33)
        #expect(await harness.read(node, buffer, at: 2 * 65536) == .ok)
        #expect(buffer.allEqual(0))
        try await state.resize(to: 4096)
        #expect(state.sizeBytes == 4096)
        #expect((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue == 4096)
        await state.close()
    }

    // MARK: QEMU-compatible image locking

    /// A consistent reader (qemu-img convert) and a writer (qemu-io) are refused while the node
    /// writes without sharing writes; -U readers are let in. Plain `qemu-img info` of a raw image
    /// is not refused even by QEMU itself (it opens with no I/O and shares everything), so info is
    /// checked as qcow2, whose metadata child refuses writers before the header is read.
    @Test func writeLockKeepsQemuAndOtherNodesOut() async throws {
        let harness = try NodeTestHarness("flock")
        defer { harness.shutdown() }
        let path = try harness.createFile("locked.raw", size: Self.mebibyte)
        let copy = harness.path("copy.raw")
        let (first, _) = try await openFile(harness, path, name: "first")
        #expect(first.usesLocks)
        // What a QEMU guest device takes by default: it shares reads but not writes.
        try await first.applyPermissions(take: [.consistentRead, .write], share: [.consistentRead, .writeUnchanged])
        #expect(first.lockedPermissions.taken == [.consistentRead, .write])
        #expect(first.lockedPermissions.unshared == [.write, .resize])

        let convert = try await QemuTool.run("qemu-img", ["convert", "-f", "raw", "-O", "raw", path, copy])
        #expect(convert.status != 0)
        #expect(convert.output.contains("Failed to get shared \"write\" lock"), "\(convert.output)")
        let info = try await QemuTool.run("qemu-img", ["info", "-f", "qcow2", path])
        #expect(info.status != 0)
        #expect(info.output.contains("Failed to get shared \"write\" lock"), "\(info.output)")
        let writer = try await QemuTool.run("qemu-io", ["-f", "raw", "-c", "read 0 512", path])
        #expect(writer.status != 0)
        #expect(writer.output.contains("Failed to get \"write\" lock"), "\(writer.output)")
        let forced = try await QemuTool.run("qemu-img", ["info", "-U", path])
        #expect(forced.status == 0, "\(forced.output)")
        #expect(try await QemuTool.run("qemu-img", ["convert", "-U", "-f", "raw", "-O", "raw", path, copy]).status == 0)

        // Another open file description in this process is refused like another process.
        let (second, _) = try await openFile(harness, path, name: "second")
        await #expect {
            try await second.applyPermissions(take: [.consistentRead, .write], share: .all)
        } throws: { error in
            let text = "\(error)"
            return text.contains("second: Failed to get \"write\" lock") && text.contains("Is another process using the image [\(path)]?")
        }
        await #expect {
            try await second.applyPermissions(take: [.consistentRead], share: [.consistentRead])
        } throws: { error in
            "\(error)".contains("Failed to get shared \"write\" lock")
        }
        // The failed attempts left the second node's previous (empty) locks in place.
        #expect(second.lockedPermissions.taken.isEmpty && second.lockedPermissions.unshared.isEmpty)
        try await second.applyPermissions(take: [.consistentRead], share: .all)

        // Dropping write and sharing everything lets consistent readers in while both stay open.
        try await first.applyPermissions(take: [.consistentRead], share: .all)
        #expect(first.lockedPermissions.taken == [.consistentRead])
        #expect(first.lockedPermissions.unshared.isEmpty)
        #expect(try await QemuTool.run("qemu-img", ["convert", "-f", "raw", "-O", "raw", path, copy]).status == 0)
        #expect(try await QemuTool.run("qemu-img", ["info", "-f", "raw", path]).status == 0)

        // Taking write back works again, and closing drops every lock.
        try await first.applyPermissions(take: [.consistentRead, .write], share: [.consistentRead, .writeUnchanged])
        #expect(try await QemuTool.run("qemu-img", ["info", "-f", "qcow2", path]).output.contains("lock"))
        await first.close()
        await second.close()
        let after = try await QemuTool.run("qemu-io", ["-f", "raw", "-c", "read 0 512", path])
        #expect(after.status == 0, "\(after.output)")
        #expect(try await QemuTool.run("qemu-img", ["convert", "-f", "raw", "-O", "raw", path, copy]).status == 0)
    }

    @Test func lockingOffTakesNoLocks() async throws {
        let harness = try NodeTestHarness("flockoff")
        defer { harness.shutdown() }
        let path = try harness.createFile("unlocked.raw", size: 65536)
        let (state, _) = try await openFile(harness, path, ["locking": .string("off")])
        #expect(!state.usesLocks)
        try await state.applyPermissions(take: [.consistentRead, .write], share: [])
        #expect(try await QemuTool.run("qemu-io", ["-f", "raw", "-c", "read 0 512", path]).status == 0)
        await state.close()
    }

    // MARK: Options a user gets wrong

    @Test func hostileOptionsGiveErrorsNamingTheOption() async throws {
        let harness = try NodeTestHarness("fopts")
        defer { harness.shutdown() }
        let path = try harness.createFile("opts.raw", size: 65536)
        let file: JSONValue = .string(path)
        let cases: [([String: JSONValue], String)] = [
            ([:], "Parameter 'filename' is missing"),
            (["filename": .string("")], "Parameter 'filename' must not be empty"),
            (["filename": .int(3)], "Parameter 'filename' expects a string"),
            (["filename": file, "cache": .string("sometimes")], "Parameter 'cache' expects one of none, writeback, writethrough, directsync, unsafe, got 'sometimes'"),
            (["filename": file, "cache": .int(1)], "Parameter 'cache' expects a cache mode name or an object"),
            (["filename": file, "cache": .object(["direct": .string("maybe")])], "Parameter 'cache.direct' expects a boolean"),
            (["filename": file, "cache": .object(["speed": .bool(true)])], "Parameter 'cache.speed' is unexpected"),
            (["filename": file, "cache.no-flush": .int(2)], "Parameter 'cache.no-flush' expects a boolean"),
            (["filename": file, "bogus": .bool(true)], "Parameter 'bogus' is unexpected"),
            (["filename": file, "size": .int(4096)], "Parameter 'size' is unexpected"),
            (["filename": file, "aio": .string("threads")], "Parameter 'aio' supports only 'io_uring'"),
            (["filename": file, "aio": .string("native")], "got 'native'"),
            (["filename": file, "locking": .string("sometimes")], "Parameter 'locking' expects one of on, off, auto"),
            (["filename": file, "discard": .string("trim")], "Parameter 'discard' expects one of ignore, unmap"),
            (["filename": file, "read-only": .int(7)], "Parameter 'read-only' expects a boolean"),
            (["filename": .string(harness.path("missing.raw"))], "Could not open '\(harness.path("missing.raw"))': No such file or directory"),
            (["filename": .string(harness.directory)], "Could not open '\(harness.directory)': Is a directory"),
            (["filename": .string(harness.directory), "read-only": .bool(true)], "'file' driver requires '\(harness.directory)' to be a regular file"),
        ]
        for (options, expected) in cases {
            let error = await harness.openError(FileNode.descriptor, name: "bad", options: options)
            #expect(error?.contains(expected) == true, "\(options): got \(error ?? "no error"), expected \(expected)")
            #expect(error?.hasPrefix("bad: ") == true || error?.hasPrefix("Could not open node 'bad'") == true, "\(error ?? "")")
        }
    }

    @Test func readOnlyNodeRefusesWrites() async throws {
        let harness = try NodeTestHarness("fro")
        defer { harness.shutdown() }
        let path = try harness.createFile("ro.raw", size: 65536)
        let (state, node) = try await openFile(harness, path, ["read-only": .bool(true)])
        let buffer = TestBuffer(count: 4096)
        #expect(await harness.write(node, buffer, at: 0) == .readOnly)
        #expect(await harness.submit(node, BlockRequest(operation: .writeZeroes, offsetBytes: 0, lengthBytes: 4096)) == .readOnly)
        #expect(await harness.read(node, buffer, at: 0) == .ok)
        await #expect(throws: SystemError.self) { try await state.resize(to: 8192) }
        await state.close()
    }

    @Test func malformedRequestsAreInvalid() async throws {
        let harness = try NodeTestHarness("fbadreq")
        defer { harness.shutdown() }
        let path = try harness.createFile("req.raw", size: 65536)
        let (state, node) = try await openFile(harness, path)
        let small = TestBuffer(count: 100)
        let tooLong = BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 4096, buffer: small.io)
        #expect(await harness.submit(node, tooLong) == .invalid)
        let overflowing = BlockRequest(operation: .write, offsetBytes: .max - 10, lengthBytes: 100, buffer: small.io)
        #expect(await harness.submit(node, overflowing) == .invalid)
        await state.close()
    }
}
