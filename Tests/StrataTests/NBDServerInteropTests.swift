import Foundation
import Glibc
import Testing

/// Runs a client tool with /usr/bin first in PATH (nbdsh breaks under another python3).
private func client(_ tool: String, _ arguments: [String]) async throws -> QemuTool.Result {
    try await QemuTool.run("PATH=/usr/bin:/usr/local/bin:/bin", [tool] + arguments)
}

@discardableResult
private func requireClient(_ tool: String, _ arguments: [String], allowing statuses: Set<Int32> = [0]) async throws -> QemuTool.Result {
    let result = try await client(tool, arguments)
    try #require(statuses.contains(result.status), "\(tool) \(arguments.joined(separator: " ")) exited \(result.status): \(result.output)")
    return result
}

/// A sparse raw image with a few regions of known data.
private func sparseRaw(_ path: String, mib: Int = 64) async throws {
    try await QemuTool.require("qemu-img", ["create", "-f", "raw", path, "\(mib)M"])
    try await QemuTool.require("qemu-io", ["-f", "raw", "-c", "write -P 0xa1 1M 1M", "-c", "write -P 0xb2 5M 64k", "-c", "write -z 8M 1M",
                                           "-c", "write -P 0xc3 20M 3M", path])
}

/// `qemu-img map --output=json` extents as (start, length, data, zero), adjacent equal ones merged.
struct MapExtent: Hashable, CustomStringConvertible {
    var start: Int
    var length: Int
    var data: Bool
    var zero: Bool
    var description: String { "\(start)+\(length)\(data ? " data" : "")\(zero ? " zero" : "")" }

    static func parse(_ json: String) throws -> [MapExtent] {
        let text = json[json.firstIndex(of: "[")!...]
        let array = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        var merged: [MapExtent] = []
        for entry in array {
            let extent = MapExtent(start: entry["start"] as? Int ?? -1, length: entry["length"] as? Int ?? -1,
                                   data: entry["data"] as? Bool ?? false, zero: entry["zero"] as? Bool ?? false)
            if let last = merged.last, last.data == extent.data, last.zero == extent.zero, last.start + last.length == extent.start {
                merged[merged.count - 1].length += extent.length
            } else {
                merged.append(extent)
            }
        }
        return merged
    }
}

/// Python for nbdsh: code(f) is 'ok' or the errno name of the server's error (from the message
/// when libnbd leaves e.errno unset, as it does for some refusals).
private let errnoPrelude = """
    import errno, os
    def code(f):
        try:
            f(); return 'ok'
        except nbd.Error as e:
            if e.errno is not None:
                return errno.errorcode.get(e.errno, str(e.errno))
            for number, name in errno.errorcode.items():
                if e.string.endswith(os.strerror(number)):
                    return name
            return 'unknown: ' + e.string
    """

/// `strata serve` under real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy, nbdsh, fio).
/// STRATA_NBD_TEST_PEER=qemu-nbd|nbdkit runs the same checks against a peer, to validate the
/// checks themselves; tests a peer cannot serve (several exports) skip then.
@Suite(.serialized, .timeLimit(.minutes(2))) struct NBDServerInteropTests {
    @Test func qemuIoPatternWritesAndReads() async throws {
        let scratch = try ScratchDirectory("nbd-qemu-io")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "64M"])
        let server = try NBDTestServer.start([.init(name: "disk", image: image, writable: true)], on: .unix(scratch.path("s.sock")), scratch: scratch)
        let uri = server.uri("disk")
        let commands = ["write -P 0x11 0 1M", "read -P 0x11 0 1M", "write -P 0x22 4097 12345", "read -P 0x22 4097 12345",
                        "read -P 0x11 0 4097", "write -z 512k 64k", "read -P 0 512k 64k", "discard 2M 1M", "read -P 0 2M 1M",
                        "aio_write -P 0x33 8M 64k", "aio_write -P 0x44 9M 64k", "aio_flush", "aio_read -P 0x33 8M 64k",
                        "aio_read -P 0x44 9M 64k", "aio_flush", "flush", "read -P 0 63M 1M"]
        let result = try await QemuTool.run("qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [uri])
        #expect(result.status == 0 && !result.output.contains("Pattern verification failed") && !result.output.contains("failed"), "\(result.output)")
        // The image file itself holds what was written.
        #expect(try await QemuTool.io("read -P 0x44 9M 64k", image))
        #expect(try await QemuTool.io("read -P 0x22 4097 12345", image))
        #expect(server.stop().status == 0, "\(server.log)")
    }

    @Test func qemuImgConvertToAndFromExports() async throws {
        let scratch = try ScratchDirectory("nbd-convert")
        let image = scratch.path("source.raw")
        try await sparseRaw(image)
        let source = try NBDTestServer.start([.init(name: "src", image: image)], on: .unix(scratch.path("a.sock")), scratch: scratch)
        let copy = scratch.path("copy.raw")
        try await QemuTool.require("qemu-img", ["convert", "-f", "raw", "-O", "raw", source.uri("src"), copy])
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, copy])
        source.stop()

        let target = scratch.path("target.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", target, "64M"])
        try await QemuTool.require("qemu-io", ["-f", "raw", "-c", "write -P 0xee 0 64M", target])
        let server = try NBDTestServer.start([.init(name: "dst", image: target, writable: true)], on: .unix(scratch.path("b.sock")), scratch: scratch)
        try await QemuTool.require("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", image, server.uri("dst")])
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, server.uri("dst")])
        #expect(server.stop().status == 0)
        try await QemuTool.require("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, target])
    }

    /// Block status through the export is what qemu-img map says of the image itself.
    @Test(arguments: ["raw", "qcow2"]) func mapMatchesTheImage(format: String) async throws {
        let scratch = try ScratchDirectory("nbd-map")
        let image = scratch.path("disk.\(format)")
        if format == "raw" {
            try await sparseRaw(image)
        } else {
            try await QemuTool.require("qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=64k", image, "64M"])
            try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0xa1 1M 1M", "-c", "write -z 8M 1M", "-c", "write -P 5 9M 128k",
                                                   "-c", "write -z 9M 64k", "-c", "write -P 6 30M 64k", image])
        }
        let server = try NBDTestServer.start([.init(name: "m", image: image, format: format)], on: .unix(scratch.path("s.sock")), scratch: scratch)
        let direct = try MapExtent.parse(try await QemuTool.require("qemu-img", ["map", "--output=json", "-f", format, image]).output)
        let exported = try MapExtent.parse(try await QemuTool.require("qemu-img", ["map", "--output=json", "-f", "raw", server.uri("m")]).output)
        #expect(Set(direct) == Set(exported), "image: \(direct)\nexport: \(exported)")
        server.stop()
    }

    @Test func allocationDepthOfAQcow2WithBacking() async throws {
        let scratch = try ScratchDirectory("nbd-depth")
        let base = scratch.path("base.qcow2")
        let top = scratch.path("top.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-f", "qcow2", base, "4M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 1M", base])
        try await QemuTool.require("qemu-img", ["create", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 2 512k 1M", "-c", "write -z 3M 64k", top])
        let server = try NBDTestServer.start([.init(name: "t", image: top, format: "qcow2", allocationDepth: true, backing: base)],
                                             on: .unix(scratch.path("s.sock")), scratch: scratch)
        let depth = try await requireClient("nbdinfo", ["--map=qemu:allocation-depth", server.uri("t")]).output
        let rows = depth.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).prefix(3).joined(separator: " ") }
        #expect(rows == ["0 524288 2", "524288 1048576 1", "1572864 1572864 0", "3145728 65536 1", "3211264 983040 0"], "\(depth)")
        let allocation = try await requireClient("nbdinfo", ["--map", server.uri("t")]).output
        let map = allocation.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).prefix(3).joined(separator: " ") }
        #expect(map == ["0 1572864 0", "1572864 2621440 3"], "\(allocation)")
        server.stop()
    }

    @Test(arguments: [false, true]) func nbdinfoJsonFields(writable: Bool) async throws {
        let scratch = try ScratchDirectory("nbd-info")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "48M"])
        let server = try NBDTestServer.start([.init(name: "info", image: image, writable: writable, description: "strata-disk")],
                                             on: .tcp, scratch: scratch)
        if NBDTestServer.peer == nil { #expect(server.stdoutText.contains("NBD server listening on 127.0.0.1:")) }
        let output = try await requireClient("nbdinfo", ["--json", server.uri("info")]).output
        let json = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        let export = try #require((json["exports"] as? [[String: Any]])?.first)
        #expect(json["protocol"] as? String == "newstyle-fixed")
        #expect(json["structured"] as? Bool == true)
        #expect(export["export-size"] as? Int == 48 << 20)
        #expect(export["is_read_only"] as? Bool == !writable)
        #expect(export["can_flush"] as? Bool == true)
        #expect(export["can_fua"] as? Bool == true)
        #expect(export["can_trim"] as? Bool == writable)
        #expect(export["can_zero"] as? Bool == writable)
        #expect(export["can_fast_zero"] as? Bool == writable)
        if NBDTestServer.peer == nil {
            #expect(export["can_multi_conn"] as? Bool == true)
            #expect(export["description"] as? String == "strata-disk")
        }
        let minimum = export["block_size_minimum"] as? Int ?? 0
        let preferred = export["block_size_preferred"] as? Int ?? 0
        let maximum = export["block_size_maximum"] as? Int ?? 0
        #expect(minimum >= 1 && minimum <= 512 && preferred >= minimum && preferred <= 65536 && maximum >= 1 << 20, "\(export)")
        #expect((export["contexts"] as? [String])?.contains("base:allocation") == true)
        for (capability, expected) in [("flush", true), ("fua", true), ("trim", writable), ("zero", writable), ("read", true),
                                       ("write", writable), ("structured-reply", true)] {
            let result = try await client("nbdinfo", ["--can", capability, server.uri("info")])
            #expect(result.status == (expected ? 0 : 2), "--can \(capability): \(result.status) \(result.output)")
        }
        server.stop()
    }

    @Test func severalNamedExportsOnOneServer() async throws {
        guard NBDTestServer.peer == nil else { return }
        let scratch = try ScratchDirectory("nbd-list")
        var exports: [NBDTestServer.ExportSpec] = []
        for (index, name) in ["alpha", "beta", "gamma"].enumerated() {
            let image = scratch.path("\(name).raw")
            try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "\(index + 1)M"])
            exports.append(.init(name: name, image: image, writable: index == 1, description: "disk \(name)"))
        }
        let server = try NBDTestServer.start(exports, on: .unix(scratch.path("s.sock")), scratch: scratch)
        let output = try await requireClient("nbdinfo", ["--list", "--json", server.uri()]).output
        let json = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        let listed = (json["exports"] as? [[String: Any]]) ?? []
        #expect(Set(listed.compactMap { $0["export-name"] as? String }) == ["alpha", "beta", "gamma"], "\(output)")
        for (index, name) in ["alpha", "beta", "gamma"].enumerated() {
            let info = try await requireClient("nbdinfo", ["--size", server.uri(name)]).output
            #expect(info.trimmingCharacters(in: .whitespacesAndNewlines) == "\((index + 1) << 20)")
        }
        let missing = try await client("nbdinfo", ["--size", server.uri("delta")])
        #expect(missing.status != 0)
        #expect(try await QemuTool.io("write -P 9 0 4k", server.uri("beta")))
        #expect(try await QemuTool.io("read -P 9 0 4k", server.uri("beta")))
        server.stop()
    }

    @Test func nbdcopyRoundTrip() async throws {
        let scratch = try ScratchDirectory("nbd-copy")
        let image = scratch.path("source.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "1G"])
        // 64 MiB of random data in 16 regions of 4 MiB spread over the GiB.
        let random = scratch.path("random.bin")
        try await QemuTool.require("dd", ["if=/dev/urandom", "of=\(random)", "bs=1M", "count=4", "status=none"])
        for region in 0..<16 {
            try await QemuTool.require("dd", ["if=\(random)", "of=\(image)", "bs=1M", "seek=\(region * 64 + region % 7)", "conv=notrunc", "status=none"])
        }
        let source = try NBDTestServer.start([.init(name: "src", image: image)], on: .unix(scratch.path("a.sock")), scratch: scratch)
        let copy = scratch.path("copy.raw")
        try await requireClient("nbdcopy", [source.uri("src"), copy])
        try await QemuTool.require("cmp", [image, copy])
        source.stop()

        let target = scratch.path("target.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", target, "1G"])
        let server = try NBDTestServer.start([.init(name: "dst", image: target, writable: true)], on: .unix(scratch.path("b.sock")), scratch: scratch)
        try await requireClient("nbdcopy", ["--flush", image, server.uri("dst")])
        #expect(server.stop().status == 0)
        try await QemuTool.require("cmp", [image, target])
    }

    /// Edge cases through libnbd with strict mode off, so the server is the one judging.
    @Test func nbdshEdgeCases() async throws {
        let scratch = try ScratchDirectory("nbd-edge")
        let raw = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", raw, "16M"])
        let server = try NBDTestServer.start([.init(name: "rw", image: raw, writable: true)], on: .unix(scratch.path("rw.sock")), scratch: scratch)
        let script = """
            \(errnoPrelude)
            h.set_strict_mode(0)
            size = h.get_size()
            print('read-past', code(lambda: h.pread(4096, size - 512)))
            print('read-at-end', code(lambda: h.pread(512, size)))
            print('write-past', code(lambda: h.pwrite(b'x' * 4096, size - 512)))
            print('zero-past', code(lambda: h.zero(4096, size - 512)))
            print('trim-past', code(lambda: h.trim(4096, size - 512)))
            print('status-past', code(lambda: h.block_status(4096, size, lambda *a: 0)))
            print('status-zero-length', code(lambda: h.block_status(0, 0, lambda *a: 0)))
            print('read-zero-length', code(lambda: h.pread(0, 4096)))
            print('write-zero-length', code(lambda: h.pwrite(b'', 4096)))
            h.pwrite(b'abc', 4097)
            print('unaligned', bytes(h.pread(5, 4096)) == b'\\0abc\\0')
            h.pwrite(b'F' * 4096, 8192, nbd.CMD_FLAG_FUA)
            print('fua', bytes(h.pread(4096, 8192)) == b'F' * 4096)
            print('fua-read', code(lambda: h.pread(512, 0, nbd.CMD_FLAG_FUA)))
            h.pwrite(b'D' * 65536, 1 << 20)
            print('zero-nohole', code(lambda: h.zero(65536, 1 << 20, nbd.CMD_FLAG_NO_HOLE)), bytes(h.pread(65536, 1 << 20)) == bytes(65536))
            print('flush', code(lambda: h.flush()))
            print('trim', code(lambda: h.trim(65536, 2 << 20)))
            print('cache', code(lambda: h.cache(65536, 0)) if h.can_cache() else 'ok')
            print('fast-zero', code(lambda: h.zero(65536, 4 << 20, nbd.CMD_FLAG_FAST_ZERO)), bytes(h.pread(65536, 4 << 20)) == bytes(65536))
            print('too-big-read', code(lambda: h.pread(64 << 20, 0)))
            """
        let output = try await requireClient("nbdsh", ["-u", server.uri("rw"), "-c", script]).output
        let lines = Set(output.split(separator: "\n").map(String.init))
        for expected in ["read-past EINVAL", "read-at-end EINVAL", "write-past ENOSPC", "zero-past ENOSPC", "trim-past EINVAL", "status-past EINVAL",
                         "status-zero-length EINVAL", "unaligned True", "fua True", "fua-read ok", "zero-nohole ok True", "flush ok", "trim ok",
                         "cache ok", "fast-zero ok True", "too-big-read EINVAL"] {
            #expect(lines.contains(expected), "expected '\(expected)' in:\n\(output)")
        }
        // Zero-length reads and writes: the spec leaves them to the server; success or EINVAL, never a broken connection.
        #expect(lines.contains("read-zero-length ok") || lines.contains("read-zero-length EINVAL"), "\(output)")
        #expect(lines.contains("write-zero-length ok") || lines.contains("write-zero-length EINVAL"), "\(output)")
        #expect(server.stop().status == 0)

        // A read-only export refuses writes, zeroes and trims with EPERM and still flushes.
        let readOnly = try NBDTestServer.start([.init(name: "ro", image: raw)], on: .unix(scratch.path("ro.sock")), scratch: scratch)
        let refusal = try await requireClient("nbdsh", ["-u", readOnly.uri("ro"), "-c", """
            \(errnoPrelude)
            h.set_strict_mode(0)
            print('write', code(lambda: h.pwrite(b'x' * 512, 0)))
            print('zero', code(lambda: h.zero(512, 0)))
            print('trim', code(lambda: h.trim(512, 0)))
            print('flush', code(lambda: h.flush()))
            print('read', bytes(h.pread(3, 4097)) == b'abc')
            """]).output
        for expected in ["write EPERM", "zero EPERM", "trim EPERM", "flush ok", "read True"] {
            #expect(refusal.contains(expected), "expected '\(expected)' in:\n\(refusal)")
        }
        readOnly.stop()

        // FAST_ZERO that would need a slow fallback (a sub-cluster zero inside an allocated qcow2 cluster) is ENOTSUP, and changes nothing.
        let qcow2 = scratch.path("disk.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=64k", qcow2, "16M"])
        try await QemuTool.require("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 128k", qcow2])
        let fast = try NBDTestServer.start([.init(name: "q", image: qcow2, format: "qcow2", writable: true)], on: .unix(scratch.path("q.sock")), scratch: scratch)
        let fastOutput = try await requireClient("nbdsh", ["-u", fast.uri("q"), "-c", """
            import errno
            try:
                h.zero(512, 4096, nbd.CMD_FLAG_FAST_ZERO); print('fast-zero ok')
            except nbd.Error as e:
                print('fast-zero', errno.errorcode.get(e.errno, str(e.errno)))
            print('intact', bytes(h.pread(512, 4096)) == b'\\x5a' * 512)
            h.zero(512, 4096)
            print('slow', bytes(h.pread(512, 4096)) == bytes(512))
            """]).output
        for expected in ["fast-zero ENOTSUP", "intact True", "slow True"] {
            #expect(fastOutput.contains(expected), "expected '\(expected)' in:\n\(fastOutput)")
        }
        #expect(fast.stop().status == 0)

        // A v2 qcow2 has no zero flag: zeros that must stay allocated (NO_HOLE) are written out,
        // so FAST_ZERO | NO_HOLE is ENOTSUP (as qemu-nbd says) and changes nothing.
        let v2 = scratch.path("v2.qcow2")
        try await QemuTool.require("qemu-img", ["create", "-f", "qcow2", "-o", "compat=0.10", v2, "16M"])
        let old = try NBDTestServer.start([.init(name: "v2", image: v2, format: "qcow2", writable: true)], on: .unix(scratch.path("v2.sock")), scratch: scratch)
        let v2Output = try await requireClient("nbdsh", ["-u", old.uri("v2"), "-c", """
            \(errnoPrelude)
            h.pwrite(b'\\x55' * 65536, 0)
            print('fast-nohole', code(lambda: h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)))
            print('intact', bytes(h.pread(65536, 0)) == b'\\x55' * 65536)
            print('nohole', code(lambda: h.zero(65536, 0, nbd.CMD_FLAG_NO_HOLE)), bytes(h.pread(65536, 0)) == bytes(65536))
            """]).output
        for expected in ["fast-nohole ENOTSUP", "intact True", "nohole ok True"] {
            #expect(v2Output.contains(expected), "expected '\(expected)' in:\n\(v2Output)")
        }
        #expect(old.stop().status == 0)
        try await QemuTool.require("qemu-img", ["check", v2])
        let map = try await QemuTool.require("qemu-img", ["map", "--output=json", v2]).output
        #expect(map.contains("\"data\": true"), "NO_HOLE zeros stay allocated: \(map)")
    }

    @Test func fioVerifyWorkload() async throws {
        let scratch = try ScratchDirectory("nbd-fio")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "64M"])
        let server = try NBDTestServer.start([.init(name: "", image: image, writable: true)], on: .tcp, scratch: scratch)
        let result = try await client("fio", ["--name=verify", "--ioengine=nbd", "--uri=\(server.uri(""))", "--rw=randwrite", "--bs=4k",
                                              "--verify=crc32c", "--size=64m", "--iodepth=16", "--verify_state_save=0", "--output-format=json"])
        #expect(result.status == 0, "\(result.output.suffix(2000))")
        #expect(!result.output.contains("verify:") && !result.output.contains("bad magic"), "\(result.output.suffix(2000))")
        let json = try? JSONSerialization.jsonObject(with: Data(result.output[(result.output.firstIndex(of: "{") ?? result.output.startIndex)...].utf8)) as? [String: Any]
        let job = (json?["jobs"] as? [[String: Any]])?.first
        #expect(job?["error"] as? Int == 0, "\(result.output.suffix(2000))")
        #expect(server.stop().status == 0)
    }

    /// SIGTERM while a client writes: exit 0, and everything acknowledged before a flush is in the image.
    @Test func sigtermDuringWriteLoad() async throws {
        let scratch = try ScratchDirectory("nbd-sigterm")
        let image = scratch.path("disk.raw")
        try await QemuTool.require("qemu-img", ["create", "-f", "raw", image, "64M"])
        let server = try NBDTestServer.start([.init(name: "w", image: image, writable: true)], on: .unix(scratch.path("s.sock")), scratch: scratch)
        // The writer records each 64 KiB block it saw acknowledged and flushed, in order, until the connection dies.
        let ledger = scratch.path("ledger.txt")
        let writer = Task {
            try await client("nbdsh", ["-u", server.uri("w"), "-c", """
                import sys
                log = open('\(ledger)', 'w')
                i = 0
                try:
                    while i < 1024:
                        h.pwrite(bytes([i % 251 + 1]) * 65536, i * 65536)
                        if i % 8 == 7:
                            h.flush()
                            log.write('%d\\n' % i); log.flush()
                        i += 1
                except Exception as e:
                    print('stopped at', i, e)
                """])
        }
        // SIGTERM once the writer has had a flush acknowledged (the ledger's first line), not after a guess.
        for _ in 0..<2000 where ((try? String(contentsOfFile: ledger, encoding: .utf8)) ?? "").isEmpty {
            try await Task.sleep(for: .milliseconds(5))
        }
        let stopped = server.stop(timeout: 10)
        _ = try await writer.value
        #expect(stopped.inTime && stopped.status == 0, "status \(stopped.status): \(server.log)")
        let flushed = ((try? String(contentsOfFile: ledger, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int($0) }
        #expect(!flushed.isEmpty, "the writer got nothing flushed before SIGTERM")
        let last = flushed.last ?? -1
        let bytes = try Data(contentsOf: URL(fileURLWithPath: image))
        var bad: [Int] = []
        for block in 0...max(last, 0) where last >= 0 {
            let expected = UInt8(block % 251 + 1)
            if !bytes[block * 65536..<(block + 1) * 65536].allSatisfy({ $0 == expected }) { bad.append(block) }
        }
        #expect(bad.isEmpty, "flushed blocks missing after SIGTERM: \(bad.prefix(10))")
    }
}
