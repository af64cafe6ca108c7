import Foundation
import Glibc
import Testing

/// `strata img bitmap` next to `qemu-img bitmap`: the same operations on two copies of an image
/// give the same exit status and message, the same bitmaps by `qemu-img info`, the same dirty
/// ranges as QEMU reads them back (qemu-nbd -B, nbdinfo --map), and clean images.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ImgBitmapTests {
    /// The dirty ranges of `bitmap` in `image`, as qemu-nbd exports them.
    static func dirtyMap(_ image: String, bitmap: String, scratch: ScratchDirectory) async throws -> String {
        let socket = scratch.path("map-\(URL(fileURLWithPath: image).lastPathComponent).sock")
        let server = try NBDServerProcess(["qemu-nbd", "-k", socket, "-B", bitmap, "-f", "qcow2", image], readiness: .unixSocket(socket),
                                          logPath: scratch.path("qemu-nbd.log"))
        defer { _ = server.stop() }
        let map = try await QemuTool.run("nbdinfo", ["--map=qemu:dirty-bitmap:\(bitmap)", "nbd+unix:///?socket=\(socket)"])
        #expect(map.status == 0, "\(map.output)")
        return map.output
    }

    /// "name:flags:granularity" for each bitmap `qemu-img info` lists, in its order.
    static func bitmaps(_ image: String) async throws -> [String] {
        let info = try await QemuTool.run("qemu-img", ["info", "--output=json", image])
        let json = try JSONSerialization.jsonObject(with: Data(info.output.utf8)) as? [String: Any]
        let data = (json?["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        return (data?["bitmaps"] as? [[String: Any]] ?? []).map { bitmap in
            "\(bitmap["name"] ?? ""):\((bitmap["flags"] as? [String] ?? []).joined(separator: ",")):\(bitmap["granularity"] ?? "")"
        }
    }

    @Test func operationsMatchQemuImg() async throws {
        let scratch = try ScratchDirectory("img-bitmap")
        let source = scratch.path("source.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", source, "64M"])
        try await QemuTool.require("qemu-img", ["bitmap", "--add", source, "s0"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write 0 1M", "-c", "write 10M 64k", "-c", "write 40M 4k", source])
        let steps: [[String]] = [
            ["--add", "b0"], ["--add", "b0"], ["--add", "-g", "128k", "--disable", "b1"], ["--remove", "nope"],
            ["--merge", "s0", "-b", source, "-F", "qcow2", "b1"], ["--merge", "nope", "b1"], ["--add", "-g", "100", "x"],
            ["--add", "--clear", "--disable", "b2"], ["--merge", "b1", "b2"], ["--remove", "b0"], ["b1"], ["--enable", "b1"],
        ]
        var images: [String: String] = [:]
        for tool in ["qemu", "strata"] {
            let image = scratch.path("\(tool).qcow2")
            try await QemuTool.require("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
            images[tool] = image
        }
        for step in steps {
            // Options first, then FILENAME BITMAP, as qemu-img takes them.
            let arguments = Array(step.dropLast()) + ["IMAGE", step.last!]
            let qemu = try await QemuTool.run("qemu-img", ["bitmap"] + arguments.map { $0 == "IMAGE" ? images["qemu"]! : $0 })
            let strata = try await QemuTool.run(CommandLineTests.binary, ["img", "bitmap"] + arguments.map { $0 == "IMAGE" ? images["strata"]! : $0 })
            #expect(qemu.status == strata.status, "\(step): qemu-img \(qemu.status) \(qemu.output), strata \(strata.status) \(strata.output)")
            let qemuMessage = qemu.output.replacingOccurrences(of: "qemu-img: ", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
            let strataMessage = strata.output.replacingOccurrences(of: "strata img: ", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(qemuMessage == strataMessage, "\(step)")
        }
        let qemuBitmaps = try await Self.bitmaps(images["qemu"]!)
        let strataBitmaps = try await Self.bitmaps(images["strata"]!)
        #expect(qemuBitmaps == strataBitmaps && qemuBitmaps.count == 2, "qemu-img left \(qemuBitmaps), strata img \(strataBitmaps)")
        for bitmap in ["b1", "b2"] {
            let qemu = try await Self.dirtyMap(images["qemu"]!, bitmap: bitmap, scratch: scratch)
            let strata = try await Self.dirtyMap(images["strata"]!, bitmap: bitmap, scratch: scratch)
            #expect(qemu == strata && qemu.contains("dirty"), "\(bitmap): qemu-img left\n\(qemu)\nstrata img left\n\(strata)")
        }
        let check = try await QemuTool.run("qemu-img", ["check", images["strata"]!])
        #expect(check.status == 0, "\(check.output)")
    }
}
