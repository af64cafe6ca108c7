import Foundation
import Testing

/// `strata img amend` against `qemu-img amend` 7.2: images qemu-img and qemu-io make (data, zero
/// clusters with and without a preallocated host cluster, backing files, snapshots, v2 and v3)
/// are amended by both on copies; Strata's result must check clean, show the new compat and
/// lazy-refcounts setting in `qemu-img info` and `strata img info`, read the same as qemu's
/// result and as the original, and hold no zero flags after a downgrade. Refusals must match
/// qemu-img's exit status and message.
@Suite(.serialized) struct ImgAmendTests {
    @discardableResult
    private func tool(_ name: String, _ arguments: [String], allowing statuses: Set<Int32> = [0]) async throws -> QemuTool.Result {
        try await QemuTool.require(name, arguments, allowing: statuses)
    }

    private func strata(_ arguments: [String]) async throws -> QemuTool.Result {
        #expect(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary), "build the strata product first (swift build --build-tests)")
        let result = try await QemuTool.run(CommandLineTests.binary, ["img"] + arguments)
        #expect(result.status < 128, "strata img \(arguments) crashed: \(result.output)")
        return result
    }

    private func json(_ text: String) throws -> [String: Any] {
        let start = try #require(text.firstIndex(of: "{"), "no JSON in: \(text)")
        return try #require(try JSONSerialization.jsonObject(with: Data(text[start...].utf8)) as? [String: Any])
    }

    /// compat and lazy-refcounts as an info JSON reports them.
    private func formatInfo(_ info: [String: Any]) -> (compat: String?, lazy: Bool?) {
        let specific = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        return (specific?["compat"] as? String, (specific?["lazy-refcounts"] as? NSNumber)?.boolValue)
    }

    /// One scenario: the image qemu builds, then amended by both tools on copies.
    struct Scenario: Sendable {
        var name: String
        var create: String
        var clusterSize = "64k"
        var backing = false
        var io: [String] = []
        var snapshot: (name: String, after: [String])?
        var amend: String
    }

    private func build(_ scenario: Scenario, in scratch: ScratchDirectory) async throws -> String {
        let image = scratch.path("\(scenario.name).qcow2")
        var options = "cluster_size=\(scenario.clusterSize)" + (scenario.create.isEmpty ? "" : ",\(scenario.create)")
        if scenario.backing {
            let base = scratch.path("base-\(scenario.name).qcow2")
            try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(scenario.clusterSize)", base, "4M"])
            try await tool("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 4M", base])
            options += ",backing_file=\(base),backing_fmt=qcow2"
        }
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, image, "4M"])
        if !scenario.io.isEmpty {
            // qemu-io's abort ends it by SIGABRT, leaving the image dirty on purpose.
            let statuses: Set<Int32> = scenario.io.contains("abort") ? Set(0...255) : [0]
            try await tool("qemu-io", ["-f", "qcow2"] + scenario.io.flatMap { ["-c", $0] } + [image], allowing: statuses)
        }
        if let snapshot = scenario.snapshot {
            try await tool("qemu-img", ["snapshot", "-c", snapshot.name, image])
            if !snapshot.after.isEmpty { try await tool("qemu-io", ["-f", "qcow2"] + snapshot.after.flatMap { ["-c", $0] } + [image]) }
        }
        return image
    }

    /// Data, zero clusters written with -z (preallocated where data was) and -z -u (unmapped),
    /// in and across L2 tables.
    static let zeroWrites = [
        "write -P 0x11 0 192k", "write -z 64k 64k", "write -z -u 128k 64k", "write -z 256k 128k",
        "write -P 0x22 512k 64k", "write -z -u 1M 64k", "write -P 0x33 2M 64k", "write -z 2M 64k",
    ]

    static let scenarios: [Scenario] = [
        Scenario(name: "down", create: "compat=1.1", io: zeroWrites, amend: "compat=0.10"),
        Scenario(name: "down-backing", create: "compat=1.1", backing: true, io: zeroWrites, amend: "compat=0.10"),
        // 512-byte clusters: new clusters need new refcount blocks (each covers 128 KiB).
        Scenario(name: "down-512", create: "compat=1.1", clusterSize: "512", backing: true, io: zeroWrites, amend: "compat=v2"),
        Scenario(name: "down-prealloc", create: "preallocation=metadata", io: ["write -z 0 1M", "write -P 0x44 1M 64k"], amend: "compat=0.10"),
        Scenario(name: "down-lazy", create: "lazy_refcounts=on", io: zeroWrites, amend: "compat=0.10"),
        Scenario(name: "down-zstd-empty", create: "compression_type=zstd", io: ["write -P 0x55 0 64k"], amend: "compat=0.10"),
        Scenario(name: "down-snapshot", create: "compat=1.1", io: ["write -P 0x66 0 128k", "write -z 128k 64k"],
                 snapshot: ("s1", ["write -z 0 64k", "write -P 0x77 256k 64k"]), amend: "compat=0.10"),
        Scenario(name: "up", create: "compat=0.10", io: ["write -P 0x11 0 64k"], amend: "compat=1.1"),
        Scenario(name: "up-4k-backing", create: "compat=0.10", clusterSize: "4k", backing: true, io: ["write -P 0x11 0 64k"], amend: "compat=v3"),
        Scenario(name: "up-lazy", create: "compat=0.10", io: ["write -P 0x11 0 64k"], amend: "compat=1.1,lazy_refcounts=on"),
        Scenario(name: "lazy-on", create: "compat=1.1", io: ["write -P 0x11 0 64k"], amend: "lazy_refcounts=on"),
        Scenario(name: "lazy-off", create: "lazy_refcounts=on", io: ["write -P 0x11 0 64k"], amend: "lazy_refcounts=off"),
        // abort leaves the dirty bit and stale refcounts behind: amend repairs them first.
        Scenario(name: "lazy-off-dirty", create: "lazy_refcounts=on", io: ["write -P 0x11 0 192k", "write -z 64k 64k", "abort"],
                 amend: "lazy_refcounts=off"),
        Scenario(name: "down-dirty", create: "lazy_refcounts=on", io: ["write -P 0x11 0 192k", "write -z 64k 64k", "abort"],
                 amend: "compat=0.10"),
        Scenario(name: "same", create: "compat=1.1", io: ["write -P 0x11 0 64k"], amend: "compat=1.1,refcount_bits=16,lazy_refcounts=off"),
    ]

    @Test(arguments: scenarios.map(\.name))
    func amendsLikeQemu(_ name: String) async throws {
        let scenario = try #require(Self.scenarios.first { $0.name == name })
        let scratch = try ScratchDirectory("amend")
        let original = try await build(scenario, in: scratch)
        let ours = scratch.path("ours.qcow2")
        let theirs = scratch.path("theirs.qcow2")
        for copy in [ours, theirs] { try FileManager.default.copyItem(atPath: original, toPath: copy) }

        let result = try await strata(["amend", "-o", scenario.amend, ours])
        #expect(result.status == 0, "\(name): \(result.output)")
        try await tool("qemu-img", ["amend", "-o", scenario.amend, theirs])

        let check = try await tool("qemu-img", ["check", "--output=json", ours], allowing: [0, 2, 3])
        let report = try json(check.output)
        #expect(check.status == 0 && (report["corruptions"] == nil) && (report["leaks"] == nil), "\(name): \(check.output)")

        let ourInfo = try json(try await tool("qemu-img", ["info", "--output=json", ours]).output)
        let theirInfo = try json(try await tool("qemu-img", ["info", "--output=json", theirs]).output)
        #expect(formatInfo(ourInfo) == formatInfo(theirInfo), "\(name): \(ourInfo) vs \(theirInfo)")
        let strataInfo = try json(try await strata(["info", "--output=json", ours]).output)
        #expect(formatInfo(strataInfo) == formatInfo(ourInfo), "\(name): strata info \(strataInfo)")

        #expect(try await tool("qemu-img", ["compare", ours, theirs], allowing: [0, 1]).status == 0, "\(name): differs from qemu-img's amend")
        #expect(try await tool("qemu-img", ["compare", ours, original], allowing: [0, 1]).status == 0, "\(name): contents changed")

        if formatInfo(ourInfo).compat == "0.10" {
            // v2 has no zero flag: qemu-img map (active layer) must show no zero-flag entries
            // that are allocated or present without data.
            let map = try await tool("qemu-img", ["map", "--output=json", ours])
            let extents = try #require(try JSONSerialization.jsonObject(with: Data(map.output.utf8)) as? [[String: Any]])
            for extent in extents where (extent["depth"] as? NSNumber)?.intValue == 0 {
                let zero = (extent["zero"] as? NSNumber)?.boolValue ?? false
                let present = (extent["present"] as? NSNumber)?.boolValue ?? false
                #expect(!(zero && present), "\(name): zero-flag extent left: \(extent)")
            }
        }
        if let snapshot = scenario.snapshot {
            // The snapshot's data survives (qemu-img 7.2 zeroes a shared preallocated cluster).
            try await tool("qemu-img", ["snapshot", "-a", snapshot.name, ours])
            try await tool("qemu-img", ["snapshot", "-a", snapshot.name, original])
            #expect(try await tool("qemu-img", ["compare", ours, original], allowing: [0, 1]).status == 0, "\(name): snapshot data changed")
        }
    }

    /// (create options, amend options, message both print): each refusal exits 1 as qemu-img.
    static let refusals: [(create: String, amend: String, message: String)] = [
        ("compat=0.10", "lazy_refcounts=on", "Lazy refcounts only supported with compatibility level 1.1 and above"),
        ("compat=1.1", "compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported with compatibility level 1.1 and above"),
        ("refcount_bits=8", "compat=0.10", "compat=0.10 requires refcount_bits=16"),
        ("extended_l2=on", "compat=0.10", "Cannot downgrade an image with incompatible features 0x10 set"),
        ("compat=1.1", "cluster_size=4k", "Invalid parameter 'cluster_size'\nThis option is only supported for image creation"),
        ("compat=1.1", "preallocation=metadata", "This option is only supported for image creation"),
        ("compat=1.1", "foo=bar", "Invalid parameter 'foo'"),
        ("compat=1.1", "compat=0.9", "Unknown compatibility level 0.9"),
        ("compat=1.1", "refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"),
        ("compat=0.10", "refcount_bits=8", "Refcount widths other than 16 bits require compatibility level 1.1 or above"),
        ("compat=1.1", "lazy_refcounts=maybe", "Parameter 'lazy_refcounts' expects 'on' or 'off'"),
        ("compat=1.1", "backing_file=other.qcow2", "Cannot amend the backing file"),
        ("compat=1.1", "data_file=x.raw", "data-file can only be set for images that use an external data file"),
        ("compat=1.1", "encrypt.keyslot=1", "Can't amend encryption options - encryption not present"),
    ]

    @Test func refusesLikeQemu() async throws {
        let scratch = try ScratchDirectory("amend")
        for (index, refusal) in Self.refusals.enumerated() {
            let ours = scratch.path("r\(index)-ours.qcow2")
            let theirs = scratch.path("r\(index)-theirs.qcow2")
            try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", refusal.create, ours, "1M"])
            try FileManager.default.copyItem(atPath: ours, toPath: theirs)
            let result = try await strata(["amend", "-o", refusal.amend, ours])
            let qemu = try await tool("qemu-img", ["amend", "-o", refusal.amend, theirs], allowing: [0, 1])
            #expect(result.status == qemu.status && result.status == 1, "\(refusal.amend): strata \(result.status) qemu \(qemu.status)")
            #expect(result.output.contains(refusal.message) && qemu.output.contains(refusal.message),
                    "\(refusal.amend): strata '\(result.output)' qemu '\(qemu.output)'")
            // Nothing changed: both images still read and check the same.
            #expect(try await tool("qemu-img", ["check", ours], allowing: [0, 2, 3]).status == 0)
            #expect(try await tool("qemu-img", ["compare", ours, theirs], allowing: [0, 1]).status == 0)
        }
    }

    @Test func refusesZstdWithCompressedClustersAndRaw() async throws {
        let scratch = try ScratchDirectory("amend")
        let image = scratch.path("zstd.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", image, "1M"])
        try await tool("qemu-io", ["-f", "qcow2", "-c", "write -c -P 0x11 0 64k", image])
        var result = try await strata(["amend", "-o", "compat=0.10", image])
        #expect(result.status == 1 && result.output.contains("Cannot downgrade an image with zstd compression type and existing compressed clusters"), "\(result.output)")
        #expect(try await tool("qemu-img", ["check", image], allowing: [0, 2, 3]).status == 0)
        #expect(formatInfo(try json(try await tool("qemu-img", ["info", "--output=json", image]).output)).compat == "1.1")

        let raw = scratch.path("disk.raw")
        try await tool("qemu-img", ["create", "-q", "-f", "raw", raw, "1M"])
        result = try await strata(["amend", "-f", "raw", "-o", "compat=1.1", raw])
        #expect(result.status == 1 && result.output.contains("Format driver 'raw' does not support option amendment"), "\(result.output)")
        result = try await strata(["amend", image])
        #expect(result.status == 1 && result.output.contains("Must specify options (-o)"), "\(result.output)")
        result = try await strata(["amend", "-f", "qcow2", "-o", "help"])
        #expect(result.status == 0 && result.output.contains("Amend options for 'qcow2':") && result.output.contains("lazy_refcounts=<bool (on/off)> - Postpone refcount updates"), "\(result.output)")
    }

    @Test func refusesDowngradeWithBitmaps() async throws {
        // qemu-img 7.2 downgrades and leaves leaked clusters and a stale bitmaps extension.
        let scratch = try ScratchDirectory("amend")
        let image = scratch.path("bitmap.qcow2")
        try await tool("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
        try await tool("qemu-img", ["bitmap", "--add", image, "b0"])
        let result = try await strata(["amend", "-o", "compat=0.10", image])
        #expect(result.status == 1 && result.output.contains("persistent dirty bitmaps"), "\(result.output)")
        #expect(try await tool("qemu-img", ["check", image], allowing: [0, 2, 3]).status == 0)
        #expect(formatInfo(try json(try await tool("qemu-img", ["info", "--output=json", image]).output)).compat == "1.1")
    }
}
