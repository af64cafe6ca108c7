import Foundation
import Testing

/// `strata img` as a user runs it, next to qemu-img: same JSON, same exit statuses, errors as
/// `strata img: message` with a non-zero status and never a crash.
@Suite struct ImgCommandLineTests {
    private func strata(_ arguments: [String]) async throws -> QemuTool.Result {
        #expect(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary), "build the strata product first (swift build --build-tests)")
        let result = try await QemuTool.run(CommandLineTests.binary, ["img"] + arguments)
        #expect(result.status < 128, "strata img \(arguments) crashed: \(result.output)")
        return result
    }

    private func scratch() throws -> String {
        var template = Array("\(FileManager.default.temporaryDirectory.path)/strata-imgcli-XXXXXX".utf8CString)
        _ = mkdtemp(&template)
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    private func object(_ text: String) throws -> NSDictionary {
        let start = try #require(text.firstIndex(where: { $0 == "{" || $0 == "[" }))
        let value = try JSONSerialization.jsonObject(with: Data(text[start...].utf8))
        if let array = value as? [Any] { return ["chain": array] as NSDictionary }
        return try #require(value as? NSDictionary)
    }

    @Test func createInfoCheckMeasureLikeQemu() async throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let base = directory + "/base.qcow2"
        let top = directory + "/top.qcow2"
        let raw = directory + "/disk.raw"

        var result = try await strata(["create", "-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on", base, "64M"])
        #expect(result.status == 0 && result.output.contains("Formatting '\(base)', fmt=qcow2"), "\(result.output)")
        result = try await strata(["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
        #expect(result.status == 0 && result.output.isEmpty, "\(result.output)")
        result = try await strata(["create", "-f", "raw", raw, "1M"])
        #expect(result.status == 0)
        #expect((try FileManager.default.attributesOfItem(atPath: raw)[.size] as? NSNumber)?.intValue == 1 << 20)

        for arguments in [[top], ["--backing-chain", top], [raw]] {
            let ours = try object(try await strata(["info", "--output=json"] + arguments).output)
            let qemu = try object(try await QemuTool.run("qemu-img", ["info", "--output=json"] + arguments).output)
            func withoutActualSize(_ value: NSDictionary) -> NSDictionary {
                let copy = NSMutableDictionary(dictionary: value as! [AnyHashable: Any])
                copy["actual-size"] = nil
                if let chain = copy["chain"] as? [NSDictionary] { copy["chain"] = chain.map { withoutActualSize($0) } }
                return copy
            }
            #expect(withoutActualSize(ours) == withoutActualSize(qemu), "\(arguments): \(ours) vs \(qemu)")
        }

        result = try await strata(["check", top])
        #expect(result.status == 0 && result.output.contains("No errors were found on the image."), "\(result.output)")
        result = try await strata(["check", raw])
        #expect(result.status == 63 && result.output.contains("strata img: This image format does not support checks"), "\(result.output)")

        // A leaked cluster: appended and counted by its refcount entry (16-bit, block at 8k).
        _ = try await QemuTool.run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 8k", base])
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: base))
        let end = try handle.seekToEnd()
        let cluster = Int((end + 4095) / 4096)
        try handle.seek(toOffset: UInt64(cluster) * 4096)
        try handle.write(contentsOf: Data(repeating: 0xab, count: 4096))
        try handle.seek(toOffset: 8192 + UInt64(cluster) * 2)
        try handle.write(contentsOf: Data([0, 1]))
        try handle.close()
        let qemuCheck = try await QemuTool.run("qemu-img", ["check", "--output=json", base])
        result = try await strata(["check", "--output=json", base])
        #expect(result.status == 3 && qemuCheck.status == 3, "\(result.output)")
        #expect(try object(result.output) == object(qemuCheck.output))
        result = try await strata(["check", "-r", "leaks", base])
        #expect(result.status == 0 && result.output.contains("1 leaked clusters"), "\(result.output)")
        #expect(try await QemuTool.run("qemu-img", ["check", base]).status == 0)

        for arguments in [["--size", "10G", "-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=2M", base]] {
            let ours = try object(try await strata(["measure", "--output=json"] + arguments).output)
            let qemu = try object(try await QemuTool.run("qemu-img", ["measure", "--output=json"] + arguments).output)
            #expect(ours == qemu, "\(arguments): \(ours) vs \(qemu)")
        }
    }

    @Test func errorsAreClear() async throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cases: [([String], String)] = [
            (["create", "-f", "qcow2", "-o", "cluster_size=1000", directory + "/x.qcow2", "1M"], "strata img: \(directory)/x.qcow2: Cluster size must be a power of two"),
            (["create", "-f", "qcow2", directory + "/x.qcow2", "1x"], "strata img: Invalid image size specified"),
            (["create", "-f", "qcow2", directory + "/x.qcow2"], "Image creation needs a size parameter"),
            (["create", "-f", "vmdk", directory + "/x.vmdk", "1M"], "Unknown file format 'vmdk'"),
            (["create", "-f", "qcow2", "-b", directory + "/none", directory + "/x.qcow2", "1M"], "Backing file specified without backing format"),
            (["info", directory + "/missing.qcow2"], "strata img: Could not open '\(directory)/missing.qcow2'"),
            (["check", "-r", "some", directory + "/missing.qcow2"], "Invalid option for -r"),
            (["measure", "-O", "qcow2"], "Either --size N or one filename must be specified."),
        ]
        for (arguments, message) in cases {
            let result = try await strata(arguments)
            #expect(result.status != 0, "\(arguments) succeeded")
            #expect(result.output.contains(message), "\(arguments): \(result.output)")
        }
        // A file that is not qcow2, checked as qcow2.
        let bogus = directory + "/bogus"
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: bogus))
        let result = try await strata(["check", "-f", "qcow2", bogus])
        #expect(result.status == 1 && result.output.contains("strata img:"), "\(result.output)")
    }
}
