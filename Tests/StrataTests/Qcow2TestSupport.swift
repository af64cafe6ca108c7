import Foundation
import Glibc
import StrataGraph
import Testing

/// A seeded generator (SplitMix64), so a failing random workload can be replayed.
struct SeededRandom {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// qemu-img as the judge of an image Strata wrote.
enum QemuJudge {
    /// `qemu-img check` finds no errors or leaks and the image holds `expected` (a raw copy of it
    /// is written next to the image for `qemu-img compare`).
    static func expectCleanAndEqual(_ image: String, _ expected: [UInt8], _ label: String) async throws {
        let check = try await QemuTool.run("qemu-img", ["check", "-f", "qcow2", image])
        #expect(check.status == 0 && check.output.contains("No errors were found"), "\(label): qemu-img check: \(check.output)")
        let raw = image + ".expected"
        try Data(expected).write(to: URL(fileURLWithPath: raw))
        let compare = try await QemuTool.run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, image])
        #expect(compare.status == 0, "\(label): qemu-img compare: \(compare.output)")
    }
}

/// A seeded random workload for a qcow2 node, applied to a byte-array model as qcow2 defines
/// it: writes of any size and alignment (from misaligned buffers too), write-zeroes with and
/// without MAY_UNMAP, discards (whole clusters read as zeros in v3, or as the backing file in
/// v2) and flushes.
enum Qcow2Workload {
    static func run(_ harness: NodeTestHarness, node: any BlockNode, model: inout [UInt8], backingBytes: [UInt8]? = nil,
                    clusterSize: Int, version: Int = 3, seed: UInt64, operations: Int,
                    subclusterBiased: Bool = false) async throws {
        var random = SeededRandom(state: seed)
        let size = model.count
        let subcluster = clusterSize / 32
        for step in 0..<operations {
            let kind = random.below(10)
            let offset: Int
            let length: Int
            if subclusterBiased {
                // Half of the requests around a subcluster or two, the rest anywhere.
                offset = random.below(2) == 0 ? random.below(size / subcluster) * subcluster + random.below(2) * random.below(subcluster)
                                              : random.below(size)
                length = min(size - offset, 1 + random.below(random.below(2) == 0 ? 3 * subcluster : 3 * clusterSize))
            } else {
                offset = random.below(size)
                length = min(size - offset, 1 + random.below(3 * clusterSize))
            }
            let label = "seed \(seed) step \(step)"
            switch kind {
            case 0..<6:
                let byte = UInt8(1 + random.below(255))
                let buffer = TestBuffer(count: length, misalignment: random.below(2) * 7, filledWith: byte)
                let status = await harness.write(node, buffer, at: UInt64(offset))
                try #require(status == .ok, "\(label): write \(offset)+\(length): \(status)")
                for index in offset..<offset + length { model[index] = byte }
            case 6, 7:
                let flags: RequestFlags = random.below(2) == 0 ? [.mayUnmap] : []
                let status = await harness.submit(node, BlockRequest(operation: .writeZeroes, offsetBytes: UInt64(offset), lengthBytes: length, flags: flags))
                try #require(status == .ok, "\(label): write-zeroes \(offset)+\(length): \(status)")
                for index in offset..<offset + length { model[index] = 0 }
            case 8:
                let status = await harness.submit(node, BlockRequest(operation: .discard, offsetBytes: UInt64(offset), lengthBytes: length))
                try #require(status == .ok, "\(label): discard \(offset)+\(length): \(status)")
                let first = (offset + clusterSize - 1) / clusterSize * clusterSize
                let end = offset + length == size ? size : (offset + length) / clusterSize * clusterSize
                if end > first {
                    for index in first..<end { model[index] = version == 2 ? (backingBytes?[index] ?? 0) : 0 }
                }
            default:
                let status = await harness.flush(node)
                try #require(status == .ok, "\(label): flush: \(status)")
            }
        }
        try #require(await harness.flush(node) == .ok)
    }
}

/// A private temporary directory for one test, removed at the end.
final class ScratchDirectory {
    let directory: String

    init(_ name: String) throws {
        var template = Array("\(FileManager.default.temporaryDirectory.path)/strata-\(name)-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw CocoaError(.fileWriteUnknown) }
        directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func path(_ name: String) -> String { directory + "/" + name }
}

extension QemuTool {
    /// Runs a tool and requires one of `statuses`.
    @discardableResult
    static func require(_ name: String, _ arguments: [String], allowing statuses: Set<Int32> = [0]) async throws -> Result {
        let result = try await run(name, arguments)
        try #require(statuses.contains(result.status), "\(name) \(arguments.joined(separator: " ")) exited \(result.status): \(result.output)")
        return result
    }
}
