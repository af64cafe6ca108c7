import Foundation
import StrataEngine
import StrataGraph
import StrataImageTools
import Testing

/// commit, rebase and resize through the engine types the `strata img` commands wrap: each runs
/// on one copy of a set of images while qemu-img does the same on another; every image Strata
/// wrote must pass `qemu-img check` and read as qemu-img's result does.
@Suite(.serialized) struct ImgCommitRebaseResizeTests {
    let harness: NodeTestHarness

    init() throws { harness = try NodeTestHarness("imgcrr") }

    @discardableResult
    func tool(_ name: String, _ arguments: [String], status: Int32 = 0) async throws -> String {
        let result = try await QemuTool.run(name, arguments)
        #expect(result.status == status, "\(name) \(arguments): \(result.output)")
        return result.output
    }

    /// Makes directories "strata" and "qemu" holding the same images, built by `setup` in the first.
    func twin(_ setup: (String) async throws -> Void) async throws -> (ours: String, theirs: String) {
        let ours = harness.path("strata")
        let theirs = harness.path("qemu")
        try FileManager.default.createDirectory(atPath: ours, withIntermediateDirectories: true)
        try await setup(ours)
        try FileManager.default.copyItem(atPath: ours, toPath: theirs)
        return (ours, theirs)
    }

    func checkClean(_ image: String) async throws {
        let output = try await tool("qemu-img", ["check", image])
        #expect(output.contains("No errors were found") && !output.contains("leaked"), "\(image): \(output)")
    }

    func same(_ a: String, _ b: String) async throws {
        try await tool("qemu-img", ["compare", a, b])
    }

    /// base (data at 0 and 2M) <- top (data over part of it, a zero cluster, data of its own).
    func chain(_ directory: String) async throws {
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "\(directory)/base.qcow2", "4M"])
        try await tool("qemu-io", ["-c", "write -P 0x11 0 192k", "-c", "write -P 0x12 2M 64k", "\(directory)/base.qcow2"])
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "\(directory)/top.qcow2"])
        try await tool("qemu-io", ["-c", "write -P 0x22 64k 68k", "-c", "write -z 2M 64k", "-c", "write -P 0x33 3M 4k", "\(directory)/top.qcow2"])
    }

    @Test func commitCopiesIntoTheBackingFileAndEmptiesTheImage() async throws {
        defer { harness.shutdown() }
        let (ours, theirs) = try await twin(chain)
        let before = harness.path("before.raw")
        try await tool("qemu-img", ["convert", "-O", "raw", "\(ours)/top.qcow2", before])
        try await ImageCommit().run(path: "\(ours)/top.qcow2")
        try await tool("qemu-img", ["commit", "-q", "\(theirs)/top.qcow2"])
        for image in ["base.qcow2", "top.qcow2"] {
            try await checkClean("\(ours)/\(image)")
            try await same("\(ours)/\(image)", "\(theirs)/\(image)")
        }
        try await same(before, "\(ours)/base.qcow2")
        // The image holds nothing now: every byte comes from the base.
        let map = try await tool("qemu-img", ["map", "--output=json", "\(ours)/top.qcow2"])
        #expect(!map.contains("\"depth\": 0"), "\(map)")

    }

    @Test func commitDropAndBaseOptions() async throws {
        defer { harness.shutdown() }
        // -d: the base gets the data, the image keeps its own.
        let (ours, theirs) = try await twin(chain)
        var commit = ImageCommit()
        commit.drop = true
        try await commit.run(path: "\(ours)/top.qcow2")
        try await tool("qemu-img", ["commit", "-q", "-d", "\(theirs)/top.qcow2"])
        for image in ["base.qcow2", "top.qcow2"] {
            try await checkClean("\(ours)/\(image)")
            try await same("\(ours)/\(image)", "\(theirs)/\(image)")
        }
        let map = try await tool("qemu-img", ["map", "--output=json", "\(ours)/top.qcow2"])
        #expect(map.contains("\"depth\": 0"), "\(map)")

        // -b with a three-level chain: mid's and top's data go into base; -b implies -d.
        let three = harness.path("three")
        try FileManager.default.createDirectory(atPath: three, withIntermediateDirectories: true)
        try await chain(three)
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "\(three)/leaf.qcow2"])
        try await tool("qemu-io", ["-c", "write -P 0x44 1M 64k", "\(three)/leaf.qcow2"])
        let before = harness.path("leaf.raw")
        try await tool("qemu-img", ["convert", "-O", "raw", "\(three)/leaf.qcow2", before])
        commit = ImageCommit()
        commit.base = "base.qcow2"
        try await commit.run(path: "\(three)/leaf.qcow2")
        try await checkClean("\(three)/base.qcow2")
        try await same(before, "\(three)/base.qcow2")
        try await same(before, "\(three)/leaf.qcow2")

        // Errors in qemu-img's words.
        commit.base = "nowhere.qcow2"
        await #expect(throws: ImageToolError("Did not find 'nowhere.qcow2' in the backing chain of '\(three)/leaf.qcow2'")) {
            try await commit.run(path: "\(three)/leaf.qcow2")
        }
        await #expect(throws: ImageToolError("Image does not have a backing file")) {
            try await ImageCommit().run(path: "\(three)/base.qcow2")
        }
    }

    @Test func commitGrowsASmallerBase() async throws {
        defer { harness.shutdown() }
        let (ours, theirs) = try await twin { directory in
            try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "\(directory)/base.qcow2", "1M"])
            try await tool("qemu-io", ["-c", "write -P 0x11 0 64k", "\(directory)/base.qcow2"])
            try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "\(directory)/top.qcow2", "3M"])
            try await tool("qemu-io", ["-c", "write -P 0x22 2M 64k", "\(directory)/top.qcow2"])
        }
        try await ImageCommit().run(path: "\(ours)/top.qcow2")
        try await tool("qemu-img", ["commit", "-q", "\(theirs)/top.qcow2"])
        try await checkClean("\(ours)/base.qcow2")
        try await same("\(ours)/base.qcow2", "\(theirs)/base.qcow2")
        try await same("\(ours)/top.qcow2", "\(theirs)/top.qcow2")
    }

    @Test(arguments: [("65536", "1M", "3M"), ("512", "1M", "8M"), ("512", "64k", "64M")])
    func resizeGrowsAndShrinksQcow2(clusterSize: String, from: String, to: String) async throws {
        defer { harness.shutdown() }
        let (ours, theirs) = try await twin { directory in
            try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", "\(directory)/img.qcow2", from])
            try await tool("qemu-io", ["-c", "write -P 0x11 0 16k", "-c", "write -P 0x22 32k 8k", "\(directory)/img.qcow2"])
        }
        let mine = "\(ours)/img.qcow2"
        let reference = "\(theirs)/img.qcow2"
        try await ImageResize().run(path: mine, size: try .init(parsing: to))
        try await tool("qemu-img", ["resize", "-q", reference, to])
        try await checkClean(mine)
        try await same(mine, reference)
        let grown = try await tool("qemu-img", ["info", "--output=json", mine])
        #expect(grown.contains("\"virtual-size\": \(OptionReader.parseSize(to)!)"), "\(grown)")
        try await tool("qemu-io", ["-c", "write -P 0x33 \(to) 64k".replacingOccurrences(of: "\(to) ", with: "\(OptionReader.parseSize(to)! - 65536) "), mine])
        try await checkClean(mine)
        // Shrinking needs --shrink, then drops what lies past the new end.
        await #expect(throws: ImageToolError("Use the --shrink option to perform a shrink operation.", warnings: [
            "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        ])) {
            try await ImageResize().run(path: mine, size: try .init(parsing: "-8k"))
        }
        try await ImageResize(shrink: true).run(path: mine, size: try .init(parsing: "36k"))
        try await tool("qemu-img", ["resize", "-q", "--shrink", reference, "36k"])
        try await checkClean(mine)
        try await same(mine, reference)
        let info = try await tool("qemu-img", ["info", "--output=json", mine])
        #expect(info.contains("\"virtual-size\": 36864"), "\(info)")
        await #expect(throws: ImageToolError("New image size must be positive")) {
            try await ImageResize(shrink: true).run(path: mine, size: try .init(parsing: "-36k"))
        }
    }

    @Test func resizeRaw() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 1 << 20)
        try await tool("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 1M", path])
        try await ImageResize().run(path: path, size: try .init(parsing: "+1M"))
        try await tool("qemu-io", ["-f", "raw", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0 1M 1M", path])
        try await ImageResize(shrink: true).run(path: path, size: try .init(parsing: "512k"))
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int == 512 << 10)
    }

    /// base1 and base2 share some data and differ elsewhere; top (over base1) holds data of its own.
    func rebaseImages(_ directory: String) async throws {
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "\(directory)/base1.qcow2", "4M"])
        try await tool("qemu-io", ["-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 128k", "-c", "write -P 0x23 3M 1k", "\(directory)/base1.qcow2"])
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "\(directory)/base2.qcow2", "2M"])
        try await tool("qemu-io", ["-c", "write -P 0x11 0 64k", "-c", "write -P 0x44 1536k 64k", "\(directory)/base2.qcow2"])
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base1.qcow2", "-F", "qcow2", "\(directory)/top.qcow2"])
        try await tool("qemu-io", ["-c", "write -P 0x55 1028k 4k", "\(directory)/top.qcow2"])
    }

    @Test func safeRebaseKeepsWhatTheImageReads() async throws {
        defer { harness.shutdown() }
        let (ours, theirs) = try await twin(rebaseImages)
        let before = harness.path("before.raw")
        try await tool("qemu-img", ["convert", "-O", "raw", "\(ours)/top.qcow2", before])
        var rebase = ImageRebase()
        rebase.backingFormat = "qcow2"
        try await rebase.run(path: "\(ours)/top.qcow2", backing: "base2.qcow2")
        try await tool("qemu-img", ["rebase", "-q", "-b", "base2.qcow2", "-F", "qcow2", "\(theirs)/top.qcow2"])
        try await checkClean("\(ours)/top.qcow2")
        let info = try await tool("qemu-img", ["info", "\(ours)/top.qcow2"])
        #expect(info.contains("backing file: base2.qcow2") && info.contains("backing file format: qcow2"), "\(info)")
        try await same(before, "\(ours)/top.qcow2")
        try await same("\(ours)/top.qcow2", "\(theirs)/top.qcow2")
        let ourMap = try await tool("qemu-img", ["map", "--output=json", "\(ours)/top.qcow2"])
        let theirMap = try await tool("qemu-img", ["map", "--output=json", "\(theirs)/top.qcow2"])
        #expect(ourMap.replacingOccurrences(of: "\"offset\": [0-9]+", with: "", options: .regularExpression)
            == theirMap.replacingOccurrences(of: "\"offset\": [0-9]+", with: "", options: .regularExpression))

        // Onto no backing file at all: everything the old chain held comes in.
        try await ImageRebase().run(path: "\(ours)/top.qcow2", backing: "")
        try await checkClean("\(ours)/top.qcow2")
        try await same(before, "\(ours)/top.qcow2")
        let alone = try await tool("qemu-img", ["info", "\(ours)/top.qcow2"])
        #expect(!alone.contains("backing file"), "\(alone)")
    }

    @Test func unsafeRebaseRewritesOnlyTheHeader() async throws {
        defer { harness.shutdown() }
        let (ours, theirs) = try await twin(rebaseImages)
        // A feature name table and the backing format extension are in the header already.
        var rebase = ImageRebase()
        rebase.unsafe = true
        await #expect(throws: ImageToolError("Could not change the backing file to 'base2.qcow2': backing format must be specified")) {
            try await rebase.run(path: "\(ours)/top.qcow2", backing: "base2.qcow2")
        }
        rebase.backingFormat = "qcow2"
        try await rebase.run(path: "\(ours)/top.qcow2", backing: "base2.qcow2")
        try await tool("qemu-img", ["rebase", "-q", "-u", "-b", "base2.qcow2", "-F", "qcow2", "\(theirs)/top.qcow2"])
        try await checkClean("\(ours)/top.qcow2")
        let ourInfo = try await tool("qemu-img", ["info", "--output=json", "\(ours)/top.qcow2"])
        let theirInfo = try await tool("qemu-img", ["info", "--output=json", "\(theirs)/top.qcow2"])
        let strip = { (text: String) in text.split(separator: "\n").filter { !$0.contains("filename") && !$0.contains("actual-size") }.joined(separator: "\n") }
        #expect(strip(ourInfo) == strip(theirInfo), "\(ourInfo)\n---\n\(theirInfo)")
        try await same("\(ours)/top.qcow2", "\(theirs)/top.qcow2")
        // The first cluster Strata wrote is byte for byte the one qemu-img wrote.
        let ourHeader = try Data(contentsOf: URL(fileURLWithPath: "\(ours)/top.qcow2")).prefix(65536)
        let theirHeader = try Data(contentsOf: URL(fileURLWithPath: "\(theirs)/top.qcow2")).prefix(65536)
        #expect(ourHeader == theirHeader)
    }
}
