import Foundation
import Glibc
import StrataFormatting
import StrataImageTools
import Testing

@testable import StrataNodes

/// The offline qcow2 tools against qemu-img 7.2: images Strata creates pass `qemu-img check` and
/// read back the same through `qemu-img info`; Strata's check reports what qemu-img's does on
/// images qemu made, finds the same damage after deliberate corruption and repairs it so that
/// qemu-img finds the image clean with unchanged contents; hostile images only ever give errors.
@Suite struct Qcow2ImageToolsTests {
    @discardableResult
    private func tool(_ name: String, _ arguments: [String], allowing statuses: Set<Int32> = [0]) async throws -> QemuTool.Result {
        try await QemuTool.require(name, arguments, allowing: statuses)
    }

    private func qemuIO(_ image: String, _ commands: [String]) async throws {
        try await tool("qemu-io", ["-f", "qcow2"] + commands.flatMap { ["-c", $0] } + [image])
    }

    private func jsonObject(_ text: String) throws -> [String: Any] {
        // qemu-img may print warnings before the JSON.
        let start = try #require(text.firstIndex(of: "{"), "no JSON in: \(text)")
        let object = try JSONSerialization.jsonObject(with: Data(text[start...].utf8))
        return try #require(object as? [String: Any])
    }

    private func qemuCheck(_ image: String) async throws -> [String: Any] {
        let result = try await tool("qemu-img", ["check", "--output=json", image], allowing: [0, 2, 3])
        return try jsonObject(result.output)
    }

    private func strataCheck(_ image: String, repair: Qcow2RepairMode? = nil) async throws -> Qcow2CheckReport {
        let io = try Qcow2FileIO(path: image, writable: repair != nil)
        return try await Qcow2Checker.check(io: io, filename: image, repair: repair)
    }

    /// The numeric fields of a check report as qemu-img's JSON has them (absent means 0).
    private func counts(_ object: [String: Any]) -> [String: Int] {
        var result: [String: Int] = [:]
        for key in ["image-end-offset", "total-clusters", "allocated-clusters", "fragmented-clusters", "compressed-clusters",
                    "check-errors", "corruptions", "leaks", "leaks-fixed", "corruptions-fixed"] {
            result[key] = (object[key] as? NSNumber)?.intValue ?? 0
        }
        return result
    }

    private func expectSameCheck(_ image: String, _ comment: String) async throws {
        let qemu = counts(try await qemuCheck(image))
        let strata = try await strataCheck(image)
        #expect(counts(try jsonObject(strata.json)) == qemu, "\(comment): strata \(strata.json) vs qemu \(qemu); \(strata.messages)")
    }

    // MARK: - create

    static let createCases: [String] = [
        "", "cluster_size=512", "cluster_size=4k", "cluster_size=2M", "compat=0.10", "compat=v2,cluster_size=1k",
        "refcount_bits=1", "refcount_bits=2", "refcount_bits=4", "refcount_bits=8", "refcount_bits=32", "refcount_bits=64,cluster_size=512",
        "lazy_refcounts=on", "extended_l2=on", "extended_l2=on,cluster_size=16k", "compression_type=zstd",
        "preallocation=metadata", "preallocation=metadata,cluster_size=4k", "preallocation=metadata,refcount_bits=1,cluster_size=512",
        "data_file=DATA", "data_file=DATA,data_file_raw=on", "data_file=DATA,preallocation=metadata",
        "backing_file=BASE,backing_fmt=qcow2", "backing_file=BASE,backing_fmt=qcow2,compat=0.10",
        "backing_file=BASE,backing_fmt=qcow2,extended_l2=on,preallocation=metadata",
    ]

    @Test(arguments: createCases)
    func createdImagesMatchQemu(optionText: String) async throws {
        let scratch = try ScratchDirectory("imgcreate")
        let base = scratch.path("base.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", base, "5M"])
        let text = optionText.replacingOccurrences(of: "BASE", with: base)
        for size in ["5M", "1000", "300M"] {
            let strataImage = scratch.path("strata.qcow2")
            let qemuImage = scratch.path("qemu.qcow2")
            var options = try Qcow2CreateOptions(try ImageCreateOptionString(parsing: text.replacingOccurrences(of: "DATA", with: scratch.path("s.raw"))),
                                                 size: ImageSizeText.parse(size))
            try await Qcow2Creator.create(path: strataImage, options: options)
            options.sizeBytes = 0
            let qemuOptions = text.replacingOccurrences(of: "DATA", with: scratch.path("q.raw"))
            try await tool("qemu-img", ["create", "-q", "-f", "qcow2"] + (qemuOptions.isEmpty ? [] : ["-o", qemuOptions]) + [qemuImage, size])
            // Byte for byte qemu-img's layout, except where the data file's name differs and for
            // subclusters preallocated in a partial last cluster (qemu trims the file there), and
            // when the refcount table outgrows one cluster (qemu moves it, Strata sizes it first).
            let tableGrows = text.contains("cluster_size=512") && text.contains("preallocation") && size == "300M"
            if !text.contains("data_file"), !(text.contains("extended_l2") && text.contains("preallocation")), !tableGrows {
                let same = try Data(contentsOf: URL(fileURLWithPath: strataImage)) == Data(contentsOf: URL(fileURLWithPath: qemuImage))
                #expect(same, "\(text) \(size): the image differs from qemu-img's")
            }

            let check = try await qemuCheck(strataImage)
            #expect(counts(check)["corruptions"] == 0 && counts(check)["leaks"] == 0 && counts(check)["check-errors"] == 0,
                    "\(text) \(size): qemu-img check: \(check)")
            try await expectSameCheck(strataImage, "\(text) \(size) strata-made")
            try await expectSameCheck(qemuImage, "\(text) \(size) qemu-made")

            // qemu-img info agrees between the two images and with Strata's info.
            var ours = try jsonObject(try await tool("qemu-img", ["info", "--output=json", strataImage]).output)
            var theirs = try jsonObject(try await tool("qemu-img", ["info", "--output=json", qemuImage]).output)
            let strataInfo = try jsonObject(try await ImageInfo.read(path: strataImage, format: nil).json.text())
            for key in ["filename", "actual-size", "format-specific"] {
                ours[key] = nil
                theirs[key] = nil
            }
            #expect(NSDictionary(dictionary: ours) == NSDictionary(dictionary: theirs), "\(text) \(size): \(ours) vs \(theirs)")
            let qemuOfStrata = try jsonObject(try await tool("qemu-img", ["info", "--output=json", strataImage]).output)
            var a = qemuOfStrata
            var b = strataInfo
            a["actual-size"] = nil
            b["actual-size"] = nil
            if var data = (a["format-specific"] as? [String: Any])?["data"] as? [String: Any], data["data-file"] != nil {
                // qemu-img prints the data file name as stored; so does Strata.
                data["data-file"] = nil
                a["format-specific"] = ["type": "qcow2", "data": data]
                var ourData = (b["format-specific"] as! [String: Any])["data"] as! [String: Any]
                ourData["data-file"] = nil
                b["format-specific"] = ["type": "qcow2", "data": ourData]
            }
            #expect(NSDictionary(dictionary: a) == NSDictionary(dictionary: b), "\(text) \(size): strata info \(b) vs qemu \(a)")
        }
    }

    @Test func createRefusesWhatQemuRefuses() throws {
        let refusals: [(String, String)] = [
            ("cluster_size=1000", "Cluster size must be a power of two between 512 and 2048k"),
            ("cluster_size=4M", "Cluster size must be a power of two"),
            ("refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"),
            ("compat=0.10,refcount_bits=8", "Different refcount widths than 16 bits require compatibility level 1.1"),
            ("compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported with compatibility level 1.1"),
            ("extended_l2=on,cluster_size=4k", "at least 16384 bytes"),
            ("compat=0.10,extended_l2=on", "Extended L2 entries are only supported with compatibility level 1.1"),
            ("compression_type=zstd,compat=0.10", "Non-zlib compression type"),
            ("compression_type=lz4", "does not accept value 'lz4'"),
            ("backing_fmt=raw", "Backing format cannot be used without backing file"),
            ("data_file_raw=on", "data-file-raw requires data-file"),
            ("compat=0.10,data_file=x", "External data files are only supported"),
            ("preallocation=falloc", "not supported"),
            ("preallocation=bogus", "does not accept value 'bogus'"),
            ("encryption=on", "Encrypted images are not supported"),
            ("encrypt.format=luks", "Encrypted images are not supported"),
            ("lazy_refcounts=maybe", "expects 'on' or 'off'"),
            ("foo=1", "Invalid parameter 'foo'"),
            ("compat=xyz", "does not accept value 'xyz'"),
            ("backing_file=b,backing_fmt=qcow2,preallocation=metadata", "Backing file and preallocation"),
        ]
        for (text, message) in refusals {
            do {
                _ = try Qcow2CreateOptions(try ImageCreateOptionString(parsing: text), size: 1 << 20)
                Issue.record("\(text) was accepted")
            } catch {
                #expect(error.message.contains(message), "\(text): \(error.message)")
            }
        }
        #expect(throws: ImageOptionError.self) { try Qcow2CreateOptions(ImageCreateOptionString(), size: nil) }
    }

    @Test func optionStringFollowsQemuSyntax() throws {
        let parsed = try ImageCreateOptionString(parsing: "backing_file=a,,b.qcow2,lazy_refcounts,cluster_size=4k")
        #expect(parsed.value("backing_file") == "a,b.qcow2")
        #expect(parsed.value("lazy_refcounts") == "on")
        #expect(parsed.value("cluster_size") == "4k")
        #expect(try ImageCreateOptionString(parsing: ["compat=0.10", "help"]).wantsHelp)
        #expect(throws: ImageOptionError.self) { try ImageCreateOptionString(parsing: "a=1,,,=2") }
        #expect(ImageSizeText.parse("1.5k") == 1536)
        #expect(ImageSizeText.parse("3G") == 3 << 30)
        #expect(ImageSizeText.parse("1x") == nil)
        #expect(ImageSizeText.parse("20E") == nil)
        #expect(ImageSizeText.parse("") == nil)
    }

    // MARK: - check against qemu-img

    static let checkCases: [String] = [
        "", "cluster_size=512", "refcount_bits=1", "refcount_bits=2", "refcount_bits=4", "refcount_bits=8",
        "refcount_bits=32", "refcount_bits=64", "extended_l2=on", "compat=0.10", "lazy_refcounts=on",
    ]

    @Test(arguments: checkCases)
    func checkMatchesQemuOnWrittenImages(optionText: String) async throws {
        let scratch = try ScratchDirectory("imgcheck")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2"] + (optionText.isEmpty ? [] : ["-o", optionText]) + [image, "16M"])
        try await qemuIO(image, ["write -P 0x11 0 100k", "write -P 0x22 3M 64k", "write -z 5M 128k", "write -P 0x33 9M 1M", "discard 9M 64k", "write -P 0x44 15M 4k"])
        try await expectSameCheck(image, "\(optionText) written")
        if !optionText.contains("refcount_bits=1"), !optionText.contains("compat=0.10") {
            try await tool("qemu-img", ["snapshot", "-c", "s1", image])
            try await qemuIO(image, ["write -P 0x55 0 64k", "write -P 0x66 12M 256k"])
            try await tool("qemu-img", ["snapshot", "-c", "s2", image])
            try await expectSameCheck(image, "\(optionText) snapshots")
            try await tool("qemu-img", ["bitmap", "--add", image, "b0"])
            try await tool("qemu-img", ["bitmap", "--add", "-g", "512k", image, "b1"])
            try await expectSameCheck(image, "\(optionText) bitmaps")
        }
        let compressed = scratch.path("compressed.qcow2")
        try await tool("qemu-img", ["convert", "-c", "-O", "qcow2"] + (optionText.isEmpty ? [] : ["-o", optionText]) + [image, compressed])
        try await expectSameCheck(compressed, "\(optionText) compressed")
    }

    @Test func checkMatchesQemuWithDataFileAndBitmapsAndZstd() async throws {
        let scratch = try ScratchDirectory("imgcheckdf")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=\(scratch.path("data.raw")),extended_l2=on", image, "8M"])
        try await qemuIO(image, ["write -P 0x11 0 100k", "write -z 1M 64k", "write -P 0x22 7M 8k"])
        try await expectSameCheck(image, "data file")
        let zstd = scratch.path("zstd.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", zstd, "8M"])
        try await qemuIO(zstd, ["write -c -P 0x11 0 64k", "write -c -P 0x22 1M 64k", "write -P 0x33 2M 64k"])
        try await expectSameCheck(zstd, "zstd compressed")
        let report = try await strataCheck(zstd)
        #expect(report.compressedClusters == 2)
    }

    // MARK: - corruption and repair

    /// Offsets of the first refcount block and the refcount entry width of `image`.
    private func refcountLayout(_ image: String) throws -> (block: UInt64, bits: Int, cluster: Int) {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)).prefix(200))
        let table = bytes.loadBE64(at: 48)
        let all = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        return (all.loadBE64(at: Int(table)), 1 << Int(bytes.loadBE32(at: 96)), 1 << Int(bytes.loadBE32(at: 20)))
    }

    private func patch(_ image: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    private func patch16(_ image: String, block: UInt64, cluster: Int, value: UInt16) throws {
        try patch(image, at: block + UInt64(cluster * 2), [UInt8(value >> 8), UInt8(value & 0xff)])
    }

    enum Damage: String, CaseIterable, Sendable {
        case bumpedRefcount, zeroedDataRefcount, loweredL2Refcount, droppedRefblock, appendedLeak, clearedCopiedFlag
    }

    @Test(arguments: Damage.allCases)
    func corruptionIsFoundAndRepaired(damage: Damage) async throws {
        let scratch = try ScratchDirectory("imgrepair")
        let image = scratch.path("image.qcow2")
        let pristine = scratch.path("pristine.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "8M"])
        try await qemuIO(image, ["write -P 0x11 0 128k", "write -P 0x22 4M 64k"])
        try await tool("cp", [image, pristine])
        let layout = try refcountLayout(image)
        // Clusters: 0 header, 1 reftable, 2 refblock, 3 L1, 4 L2, 5-6 data, 7 data.
        switch damage {
        case .bumpedRefcount: try patch16(image, block: layout.block, cluster: 5, value: 3)
        case .zeroedDataRefcount: try patch16(image, block: layout.block, cluster: 6, value: 0)
        case .loweredL2Refcount: try patch16(image, block: layout.block, cluster: 4, value: 0)
        case .droppedRefblock: try patch(image, at: UInt64(layout.cluster), [UInt8](repeating: 0, count: 8))
        case .appendedLeak:
            let size = try FileManager.default.attributesOfItem(atPath: image)[.size] as! UInt64
            let end = (size + UInt64(layout.cluster) - 1) / UInt64(layout.cluster) * UInt64(layout.cluster)
            try patch(image, at: end, [UInt8](repeating: 0xee, count: layout.cluster * 2))
            let first = Int(end) / layout.cluster
            try patch16(image, block: layout.block, cluster: first, value: 1)
            try patch16(image, block: layout.block, cluster: first + 1, value: 1)
        case .clearedCopiedFlag:
            // The first L2 entry of the active table loses COPIED (refcount stays 1).
            try patch(image, at: 4 * UInt64(layout.cluster), [0x00])
        }
        try await expectSameCheck(image, "\(damage) before repair")
        let before = try await strataCheck(image)
        #expect(before.exitCode != 0, "\(damage) went unnoticed")

        let leaksOnly = damage == .bumpedRefcount || damage == .appendedLeak
        let report = try await strataCheck(image, repair: leaksOnly ? .leaks : .all)
        #expect(report.failure == nil, "\(damage): \(report.messages)")
        #expect(report.corruptions == 0 && report.leaks == 0 && report.checkErrors == 0, "\(damage): \(report.json) \(report.messages)")
        #expect(report.leaksFixed + report.corruptionsFixed > 0)
        let after = try await tool("qemu-img", ["check", image], allowing: [0, 1, 2, 3])
        #expect(after.status == 0, "\(damage): qemu-img check after repair: \(after.output)")
        let compare = try await tool("qemu-img", ["compare", pristine, image], allowing: [0, 1, 2])
        #expect(compare.status == 0, "\(damage): contents changed: \(compare.output)")
    }

    @Test func leaksModeRefusesToRebuild() async throws {
        let scratch = try ScratchDirectory("imgleaks")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "8M"])
        try await qemuIO(image, ["write -P 0x11 0 64k"])
        try patch(image, at: 65536, [UInt8](repeating: 0, count: 8))
        let report = try await strataCheck(image, repair: .leaks)
        #expect(report.failure != nil)
        #expect(report.exitCode == 1)
        let qemu = try await tool("qemu-img", ["check", "-r", "leaks", image], allowing: [1])
        #expect(qemu.status == 1)
    }

    @Test func dirtyLazyRefcountImageIsRepaired() async throws {
        let scratch = try ScratchDirectory("imgdirty")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "8M"])
        try await qemuIO(image, ["write -P 0x11 0 64k"])
        // Dirty bit set and the data cluster's refcount never written, as after a crash.
        let layout = try refcountLayout(image)
        try patch(image, at: 72 + 7, [0x01])
        try patch16(image, block: layout.block, cluster: 5, value: 0)
        let report = try await strataCheck(image, repair: .all)
        #expect(report.exitCode == 0, "\(report.json) \(report.messages)")
        let header = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)).prefix(104))
        #expect(header.loadBE64(at: 72) & 1 == 0, "dirty bit still set")
        let after = try await tool("qemu-img", ["check", image], allowing: [0, 1, 2, 3])
        #expect(after.status == 0, "\(after.output)")
    }

    // MARK: - hostile images

    @Test func hostileImagesGiveErrors() async throws {
        let scratch = try ScratchDirectory("imghostile")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "8M"])
        try await qemuIO(image, ["write -P 0x11 0 64k"])
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        var cases: [(String, [UInt8])] = [
            ("truncated header", Array(good.prefix(50))),
            ("truncated file", Array(good.prefix(70000))),
            ("empty", []),
        ]
        func with(_ name: String, _ edit: (inout [UInt8]) -> Void) {
            var bytes = good
            edit(&bytes)
            cases.append((name, bytes))
        }
        with("L1 past EOF") { $0.storeBE64(1 << 40, at: 40) }
        with("refcount table past EOF") { $0.storeBE64(1 << 50, at: 48) }
        with("absurd size") { $0.storeBE64(UInt64(Int64.max), at: 24) }
        with("absurd l1 size") { $0.storeBE32(.max, at: 36) }
        with("absurd reftable clusters") { $0.storeBE32(.max, at: 56) }
        with("snapshots past EOF") { $0.storeBE32(1000, at: 60); $0.storeBE64(1 << 16, at: 64) }
        with("L2 pointer far past EOF") { $0.storeBE64(0x8000_7000_0000_0000, at: 3 * 65536) }
        with("data pointer far past EOF") { $0.storeBE64(0x8000_00ff_ffff_0000, at: 4 * 65536) }
        with("refblock pointer unaligned") { $0.storeBE64(0x2_0200, at: 65536) }
        with("refblock pointer past EOF") { $0.storeBE64(1 << 45, at: 65536) }
        with("compressed entry huge") { $0.storeBE64(0x7fff_ffff_ffff_ffff, at: 4 * 65536 + 8) }
        for (name, bytes) in cases {
            let path = scratch.path("hostile.qcow2")
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let report = try await strataCheck(path)
                #expect(report.exitCode != 0, "\(name): reported clean")
            } catch is Qcow2ImageError {
            } catch {
                Issue.record("\(name): unexpected error type \(error)")
            }
            _ = try? await ImageInfo.read(path: path, format: "qcow2")
        }
    }

    /// Mutates bytes of valid images' metadata with a seeded generator and runs the header
    /// parser, checker and repair: each run must only throw or return a report.
    @Test func fuzzedMetadataNeverCrashes() async throws {
        let scratch = try ScratchDirectory("imgfuzz")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", image, "1M"])
        try await qemuIO(image, ["write -P 0x11 0 4k", "write -c -P 0x22 64k 4k", "write -z 128k 4k"])
        try await tool("qemu-img", ["snapshot", "-c", "s", image])
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        let metadataEnd = min(good.count, 8 * 512)
        var state: UInt64 = 0x5eed_1234_abcd_0001
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 33
        }
        // A fixed number of seeded runs, not a wall-clock budget: the same images on any machine.
        var runs = 0
        let path = scratch.path("fuzz.qcow2")
        while runs < 150 {
            var bytes = good
            for _ in 0..<(1 + Int(next() % 6)) {
                let index = Int(next() % UInt64(metadataEnd))
                bytes[index] = UInt8(truncatingIfNeeded: next())
            }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let repair: Qcow2RepairMode? = runs % 3 == 0 ? .all : nil
            _ = try? await strataCheck(path, repair: repair)
            runs += 1
        }
    }

    // MARK: - measure

    @Test func measureMatchesQemuForSizes() async throws {
        for options in ["", "cluster_size=512", "cluster_size=2M", "refcount_bits=1", "refcount_bits=64", "extended_l2=on",
                        "cluster_size=4k,refcount_bits=8", "compat=0.10"] {
            for size in ["0", "1M", "1G", "100G", "1T"] {
                let result = try await tool("qemu-img", ["measure", "--output=json", "-O", "qcow2", "--size", size] + (options.isEmpty ? [] : ["-o", options]),
                                            allowing: [0, 1])
                guard result.status == 0 else {
                    // qemu-img refuses (an L1 table over 32 MiB): so must Strata.
                    #expect(throws: ImageOptionError.self, "\(options) \(size): \(result.output)") {
                        try Qcow2Measure(options: Qcow2CreateOptions(try ImageCreateOptionString(parsing: options), size: ImageSizeText.parse(size)), allocatedBytes: nil)
                    }
                    continue
                }
                let qemu = try jsonObject(result.output)
                let ours = try Qcow2Measure(options: Qcow2CreateOptions(try ImageCreateOptionString(parsing: options), size: ImageSizeText.parse(size)),
                                            allocatedBytes: nil)
                #expect((qemu["required"] as? NSNumber)?.uint64Value == ours.required, "\(options) \(size): \(qemu) vs \(ours)")
                #expect((qemu["fully-allocated"] as? NSNumber)?.uint64Value == ours.fullyAllocated, "\(options) \(size)")
            }
        }
    }

    @Test func measureMatchesQemuForImages() async throws {
        let scratch = try ScratchDirectory("imgmeasure")
        let image = scratch.path("image.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
        try await qemuIO(image, ["write -P 0x11 0 100k", "write -z 5M 1M", "write -P 0x22 9M 3M", "write -P 0x33 63M 4k"])
        try await tool("qemu-img", ["bitmap", "--add", image, "b0"])
        for options in ["", "cluster_size=4k", "cluster_size=2M"] {
            let result = try await tool("qemu-img", ["measure", "--output=json", "-O", "qcow2"] + (options.isEmpty ? [] : ["-o", options]) + [image])
            let qemu = try jsonObject(result.output)
            let io = try Qcow2FileIO(path: image, writable: false)
            let source = try await Qcow2OfflineImage.load(io: io, name: image)
            var parsed = try ImageCreateOptionString(parsing: options)
            parsed = parsed.setting("size", to: "\(source.virtualSize)")
            let target = try Qcow2CreateOptions(parsed, size: source.virtualSize)
            let ranges = try await Qcow2AllocationScan.dataRanges(io: io, image: source)
            let bitmaps = try await source.bitmaps(io: io).map { Qcow2Measure.SourceBitmap(name: $0.name, sizeBytes: source.virtualSize, granularity: $0.granularity) }
            let ours = try Qcow2Measure(options: target, allocatedBytes: Qcow2AllocationScan.requiredBytes(ranges, clusterSize: UInt64(target.clusterSize)),
                                        sourceBitmaps: bitmaps)
            #expect((qemu["required"] as? NSNumber)?.uint64Value == ours.required, "\(options): \(qemu) vs \(ours)")
            #expect((qemu["fully-allocated"] as? NSNumber)?.uint64Value == ours.fullyAllocated, "\(options)")
            #expect((qemu["bitmaps"] as? NSNumber)?.uint64Value == ours.bitmaps, "\(options): \(qemu) vs \(ours)")
        }
    }

    // MARK: - codec

    @Test func refcountCodecRoundTrips() {
        for order in UInt32(0)...6 {
            let codec = Qcow2RefcountCodec(order: order)
            var block = [UInt8](repeating: 0, count: 512)
            let count = codec.entriesPerBlock(clusterSize: 512)
            for index in 0..<count { codec.set(block: &block, index: index, value: UInt64(index * 7) & codec.maxRefcount) }
            for index in 0..<count { #expect(codec.get(block: block, index: index) == UInt64(index * 7) & codec.maxRefcount) }
        }
        // QEMU's layout: 16-bit big-endian, sub-byte entries from the low bits.
        var block = [UInt8](repeating: 0, count: 8)
        Qcow2RefcountCodec(order: 4).set(block: &block, index: 1, value: 0x0102)
        #expect(block[2] == 1 && block[3] == 2)
        block = [UInt8](repeating: 0, count: 8)
        Qcow2RefcountCodec(order: 0).set(block: &block, index: 1, value: 1)
        #expect(block[0] == 2)
    }
}
