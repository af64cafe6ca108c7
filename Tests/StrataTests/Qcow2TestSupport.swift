import Foundation
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
