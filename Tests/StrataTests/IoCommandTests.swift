import Foundation
import Testing

/// `strata io` against qemu-io on the same images: data written by one is read back by the
/// other, and the output and exit status follow qemu-io's rules.
@Suite(.serialized) struct IoCommandTests {
    let harness: NodeTestHarness

    init() throws { harness = try NodeTestHarness("iocmd") }

    func strata(_ arguments: [String]) async throws -> QemuTool.Result {
        try await QemuTool.run(CommandLineTests.binary, ["io"] + arguments)
    }

    @Test func writesAreReadBackByQemuIo() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 1 << 20)
        let result = try await strata(["-f", "raw", "-c", "write -P 0xab 0 4k", "-c", "writev -P 0x0c 8k 512 1k", "-c", "write -z 64k 4k",
                                       "-c", "aio_write -P 7 128k 4k", "-c", "aio_flush", path])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("wrote 4096/4096 bytes at offset 0\n4 KiB, 1 ops; "))
        #expect(result.output.contains("wrote 1536/1536 bytes at offset 8192\n1.500 KiB, 1 ops; "))
        #expect(result.output.contains("wrote 4096/4096 bytes at offset 131072"))
        #expect(try await QemuTool.io("read -P 0xab 0 4k", path))
        #expect(try await QemuTool.io("read -P 0x0c 8k 1536", path))
        #expect(try await QemuTool.io("read -P 7 128k 4k", path))
    }

    @Test func qemuIoWritesAreVerifiedAndMismatchesFail() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 1 << 20)
        #expect(try await QemuTool.io("write -P 0x42 4k 8k", path))
        let good = try await strata(["-c", "read -P 0x42 4k 8k", "-c", "readv -P 0x42 4k 4k 4k", "-c", "read -q -P 0x42 -s 512 -l 512 4k 4k", path])
        #expect(good.status == 0, "\(good.output)")
        let bad = try await strata(["-c", "read -P 0x43 4k 512", "-c", "length", path])
        #expect(bad.status == 1)
        #expect(bad.output.contains("Pattern verification failed at offset 4096, 512 bytes"))
        // qemu-io 7.2 runs the commands after a failure.
        #expect(bad.output.contains("1 MiB"))
    }

    @Test func outputMatchesQemuIoForQueries() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 2 << 20)
        #expect(try await QemuTool.io("write -P 1 0 64k", path))
        for command in ["length", "info", "map", "alloc 0 8k", "alloc 100", "read -v 0 32", "read 0 2G", "read 0 1x", "read -P 300 0 1", "write -u 0 4k"] {
            let ours = try await strata(["-f", "raw", "-c", command, path])
            let theirs = try await QemuTool.run("qemu-io", ["-f", "raw", "-c", command, path])
            #expect(ours.status == theirs.status, "\(command): \(ours.output) vs \(theirs.output)")
            let keep = { (text: String) in text.split(separator: "\n").filter { !$0.contains("ops/sec") }.joined(separator: "\n") }
            #expect(keep(ours.output) == keep(theirs.output), "\(command)")
        }
    }

    @Test func errorsAndReadOnlyImages() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 1 << 20)
        let readOnly = try await strata(["-r", "-c", "write 0 512", "-c", "read 0 512", path])
        #expect(readOnly.status == 1)
        #expect(readOnly.output.contains("Block node is read-only"))
        #expect(readOnly.output.contains("read 512/512 bytes at offset 0"))
        let misc = try await strata(["-c", "nosuch", "-c", "read 0", "-c", "write -c 0 512", "-c", "read 1M 4k", "-c", "quit", "-c", "length", path])
        #expect(misc.status == 1)
        #expect(misc.output.contains("command \"nosuch\" not found"))
        #expect(misc.output.contains("bad argument count 1 to read, expected at least 2 arguments"))
        #expect(misc.output.contains("write failed: Operation not supported"))
        #expect(misc.output.contains("read failed: Input/output error"))
        #expect(!misc.output.contains("1 MiB"))
        let missing = try await strata(["-c", "length", harness.path("missing.img")])
        #expect(missing.status == 1)
        #expect(missing.output.contains("can't open device"))
    }

    @Test func truncateDiscardAndQcow2Reads() async throws {
        defer { harness.shutdown() }
        let path = try harness.createFile("disk.img", size: 1 << 20)
        let result = try await strata(["-t", "none", "-c", "truncate 3M", "-c", "length", "-c", "discard 0 4k", "-c", "flush", path])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("3 MiB"))
        #expect(result.output.contains("discard 4096/4096 bytes at offset 0"))
        let image = harness.path("img.qcow2")
        let created = try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
        #expect(created.status == 0)
        let write = try await QemuTool.run("qemu-io", ["-c", "write -P 0x77 64k 64k", image])
        #expect(write.status == 0)
        let read = try await strata(["-c", "read -P 0x77 64k 64k", "-c", "read -P 0 0 64k", "-c", "info", image])
        #expect(read.status == 0, "\(read.output)")
        #expect(read.output.contains("format name: qcow2\ncluster size: 64 KiB\nvm state offset: 512 MiB"))
    }

    /// -C: reads through a copy-on-read filter put the backing data into the top image.
    @Test func copyOnReadFlagFillsTheTopImage() async throws {
        defer { harness.shutdown() }
        let base = harness.path("cor-base.qcow2")
        let top = harness.path("cor-top.qcow2")
        #expect(try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]).status == 0)
        #expect(try await QemuTool.run("qemu-io", ["-f", "qcow2", "-c", "write -P 5 0 1M", base]).status == 0)
        #expect(try await QemuTool.run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]).status == 0)
        let read = try await strata(["-C", "-c", "read -P 5 0 512k", top])
        #expect(read.status == 0, "\(read.output)")
        let map = try await QemuTool.run("qemu-img", ["map", "--output=json", top])
        #expect(map.output.contains("{ \"start\": 0, \"length\": 524288, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true"),
                "\(map.output)")
        let check = try await QemuTool.run("qemu-img", ["check", top])
        #expect(check.status == 0, "\(check.output)")
    }
}
