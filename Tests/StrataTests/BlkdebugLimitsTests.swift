import Foundation
import StrataGraph
import StrataRuntime
import Testing
@testable import StrataFilters

/// blkdebug's request constraints (`align`, `max-transfer`, `opt-write-zero`, `max-write-zero`,
/// `opt-discard`, `max-discard`): refused as QEMU refuses them, and met for the child: every
/// request below is aligned and within its maximum, and what reads back is what was written.
@Suite struct BlkdebugLimitsTests {
    private static let diskLink = ChildLink(role: .filtered, optionKey: "image", nodeName: "disk")

    /// A memory disk that records every request it gets.
    final class RecordingDisk: NodeState {
        let bytes = Locked([UInt8](repeating: 0, count: 1 << 20))
        let log = Locked<[(StrataGraph.BlockOperation, UInt64, Int)]>([])
        var sizeBytes: UInt64 { 1 << 20 }
        func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
            RecordingInstance(queue: queue, disk: self)
        }
    }

    actor RecordingInstance: BlockNode {
        nonisolated let unownedExecutor: UnownedSerialExecutor
        nonisolated let disk: RecordingDisk
        init(queue: QueueContext, disk: RecordingDisk) {
            unownedExecutor = queue.executor.asUnownedSerialExecutor()
            self.disk = disk
        }

        nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
            disk.log.withLock { $0.append((request.operation, request.offsetBytes, request.lengthBytes)) }
            guard request.operation != .flush else { return .ok }
            guard let end = request.endBytes, end <= disk.sizeBytes else { return .ioError }
            let start = Int(request.offsetBytes)
            disk.bytes.withLock { bytes in
                switch request.operation {
                case .read:
                    bytes.withUnsafeBytes { request.buffer.base!.copyMemory(from: $0.baseAddress! + start, byteCount: request.lengthBytes) }
                case .write:
                    bytes.withUnsafeMutableBytes { ($0.baseAddress! + start).copyMemory(from: request.buffer.base!, byteCount: request.lengthBytes) }
                case .writeZeroes, .discard:
                    for index in start..<start + request.lengthBytes { bytes[index] = 0 }
                default:
                    break
                }
            }
            return .ok
        }
    }

    /// QEMU's messages for constraints it cannot meet (block/blkdebug.c, blkdebug_open).
    @Test func impossibleConstraintsAreRefusedWithQemusMessage() async throws {
        let harness = try NodeTestHarness("blkdebug-limits-bad")
        defer { harness.shutdown() }
        let disk = RecordingDisk()
        let cases: [([String: JSONValue], String)] = [
            (["align": 3], "Cannot meet constraints with align 3"),
            (["align": 512, "max-transfer": 1000], "Cannot meet constraints with max-transfer 1000"),
            (["align": 512, "opt-write-zero": 100], "Cannot meet constraints with opt-write-zero 100"),
            (["opt-write-zero": 4096, "max-write-zero": 6144], "Cannot meet constraints with max-write-zero 6144"),
            (["align": 4096, "opt-discard": 512], "Cannot meet constraints with opt-discard 512"),
            (["opt-discard": 8192, "max-discard": 4096], "Cannot meet constraints with max-discard 4096"),
        ]
        for (options, expected) in cases {
            let error = await harness.openError(BlkdebugFilter.descriptor, options: options.merging(["image": "disk"]) { a, _ in a },
                                                children: [Self.diskLink: disk])
            #expect(error?.contains(expected) == true, "\(options): \(error ?? "opened")")
        }
        // The same options through qemu-io: its message is the one above.
        let image = try harness.createFile("plain.raw", size: 1 << 20)
        let qemu = try await QemuTool.run("qemu-io", ["--image-opts", "-c", "read 0 512",
                                                      "driver=blkdebug,align=3,image.driver=file,image.filename=\(image)"])
        #expect(qemu.output.contains("Cannot meet constraints with align 3"), "\(qemu.output)")
    }

    @Test func everyRequestBelowKeepsTheConstraintsAndTheDataIsRight() async throws {
        let harness = try NodeTestHarness("blkdebug-limits")
        defer { harness.shutdown() }
        let disk = RecordingDisk()
        let options: [String: JSONValue] = ["image": "disk", "align": 4096, "max-transfer": 8192, "opt-write-zero": 8192,
                                            "max-write-zero": 16384, "opt-discard": 8192, "max-discard": 16384]
        let state = try await harness.open(BlkdebugFilter.descriptor, name: "dbg", options: options, children: [Self.diskLink: disk])
        let node = harness.instance(state, children: [Self.diskLink: RecordingInstance(queue: QueueContext(index: 0, executor: harness.queue, clock: MonotonicClock()), disk: disk)])
        var model = [UInt8](repeating: 0, count: 1 << 20)
        var random = StrataRuntime.SeededRandom(seed: 7)
        for step in 0..<200 {
            let offset = Int(random.next() % UInt64((1 << 20) - 70_000))
            let length = 1 + Int(random.next() % 65_536)
            switch random.next() % 4 {
            case 0, 1:
                let data = TestBuffer(count: length, misalignment: 0, filledWith: UInt8(truncatingIfNeeded: step + 1))
                #expect(await harness.write(node, data, at: UInt64(offset)).isOK)
                for index in offset..<offset + length { model[index] = UInt8(truncatingIfNeeded: step + 1) }
            case 2:
                #expect(await harness.submit(node, BlockRequest(operation: .writeZeroes, offsetBytes: UInt64(offset), lengthBytes: length)).isOK)
                for index in offset..<offset + length { model[index] = 0 }
            default:
                let data = TestBuffer(count: length)
                #expect(await harness.read(node, data, at: UInt64(offset)).isOK)
                #expect(data.bytes == Array(model[offset..<offset + length]), "read \(offset)+\(length) after step \(step)")
            }
        }
        // Discards are advisory: only whole 8 KiB blocks inside the range reach the disk.
        #expect(await harness.submit(node, BlockRequest(operation: .discard, offsetBytes: 1000, lengthBytes: 40_000)).isOK)
        for (operation, offset, length) in disk.log.withLock({ $0 }) {
            switch operation {
            case .read, .write:
                #expect(offset % 4096 == 0 && length % 4096 == 0 && length <= 8192, "\(operation) \(offset)+\(length)")
            case .writeZeroes:
                #expect(offset % 4096 == 0 && length <= 16384, "\(operation) \(offset)+\(length)")
                #expect(offset % 8192 == 0 || (offset + UInt64(length)) % 8192 == 0 || length < 8192, "\(operation) \(offset)+\(length) crosses an 8 KiB boundary")
            case .discard:
                #expect(offset == 8192 && length == 16384 || offset == 24576 && length == 16384, "\(operation) \(offset)+\(length)")
            default:
                break
            }
        }
        #expect(disk.log.withLock { $0.filter { $0.0 == .discard }.count } == 2)
        await state.close()
    }
}
