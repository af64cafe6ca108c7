import Glibc
import StrataGraph
import StrataNodes
import StrataRuntime

/// Rewrites the backing file name and format a qcow2 image's first cluster records, as QEMU's
/// qcow2_update_header lays them out: the header fields, the extensions (backing format first,
/// every other extension kept as it was, unknown ones included), the end marker, then the name.
/// Runs on a closed image, through its file; the first cluster is written whole and synced.
public enum Qcow2BackingNameUpdate {
    /// Sets the backing file (nil or empty: none) and its format (nil: no format extension).
    public static func update(path: String, backingFile: String?, backingFormat: String?) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("Could not open '\(path)'", errno: errno) }
        defer { close(fd) }
        var stats = stat()
        guard fstat(fd, &stats) == 0 else { throw SystemError("stat '\(path)'", errno: errno) }
        let fileSize = UInt64(stats.st_size)
        var head = try read(fd, count: Int(min(fileSize, 4096)), path: path)
        guard head.count >= 24 else { throw Qcow2EditError("Image is not in qcow2 format") }
        let clusterBits = be32(head, 20)
        if (Qcow2Header.minClusterBits...Qcow2Header.maxClusterBits).contains(clusterBits) {
            head = try read(fd, count: Int(min(UInt64(1) << UInt64(clusterBits), fileSize)), path: path)
        }
        let header = try Qcow2Header(parsing: head, fileSize: fileSize, node: path)
        let updated = try rewritten(head, header: header, backingFile: backingFile, backingFormat: backingFormat)
        let written = updated.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) }
        guard written == updated.count else { throw SystemError("Could not write the header of '\(path)'", errno: written < 0 ? errno : EIO) }
        guard fsync(fd) == 0 else { throw SystemError("Could not sync '\(path)'", errno: errno) }
    }

    /// The first cluster with the new name and format; throws ENOSPC's wording when they do not fit.
    static func rewritten(_ bytes: [UInt8], header: Qcow2Header, backingFile: String?, backingFormat: String?) throws -> [UInt8] {
        let clusterSize = Int(header.clusterSize)
        let headerLength = Int(header.headerLength)
        let oldBackingOffset = Int(be64(bytes, 8))
        let extensionsEnd = oldBackingOffset != 0 ? oldBackingOffset : min(bytes.count, clusterSize)
        var kept: [(type: UInt32, data: [UInt8])] = []
        var offset = headerLength
        while offset + 8 <= extensionsEnd {
            let type = be32(bytes, offset)
            let length = Int(be32(bytes, offset + 4))
            if type == Qcow2HeaderExtension.endType { break }
            let data = Array(bytes[offset + 8..<min(offset + 8 + length, bytes.count)])
            if type != Qcow2HeaderExtension.backingFormatType { kept.append((type, data)) }
            offset += 8 + ((length + 7) & ~7)
        }
        let name = Array((backingFile ?? "").utf8)
        if !name.isEmpty, let backingFormat {
            guard backingFormat.utf8.count <= Qcow2HeaderExtension.maxBackingFormatLength else {
                throw Qcow2EditError("backing format name is too long")
            }
            kept.insert((Qcow2HeaderExtension.backingFormatType, Array(backingFormat.utf8)), at: 0)
        }
        var area: [UInt8] = []
        for (type, data) in kept {
            area += bigEndian(UInt64(type), bytes: 4) + bigEndian(UInt64(data.count), bytes: 4) + data
            area += [UInt8](repeating: 0, count: (8 - data.count % 8) % 8)
        }
        area += [UInt8](repeating: 0, count: 8)
        guard name.count <= Int(Qcow2Header.maxBackingNameBytes), headerLength + area.count + name.count <= clusterSize else {
            throw Qcow2EditError("No space left in the file header")
        }
        var result = Array(bytes.prefix(headerLength))
        let nameOffset = name.isEmpty ? 0 : headerLength + area.count
        result.replaceSubrange(8..<20, with: bigEndian(UInt64(nameOffset), bytes: 8) + bigEndian(UInt64(name.count), bytes: 4))
        result += area + name
        // The rest of the old header area (a longer name, dropped extensions) is cleared.
        let oldEnd = max(extensionsEnd + Int(be32(bytes, 16)), offset)
        if result.count < min(oldEnd, bytes.count) { result += [UInt8](repeating: 0, count: min(oldEnd, bytes.count) - result.count) }
        return result
    }

    private static func read(_ fd: Int32, count: Int, path: String) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let done = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, count, 0) }
        guard done == count else { throw SystemError("Could not read the header of '\(path)'", errno: done < 0 ? errno : EIO) }
        return bytes
    }

    private static func be32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    private static func be64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        bytes[offset..<offset + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    private static func bigEndian(_ value: UInt64, bytes count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * (count - 1 - $0))) }
    }
}
