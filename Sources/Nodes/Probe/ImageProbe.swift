import Glibc
import StrataRuntime

/// What an image file's first bytes say before any node is opened, as QEMU's format probing
/// (bdrv_probe_all) and its backing-file lookup need: qcow2 by its magic, anything else raw,
/// and for qcow2 the backing file name and the backing format header extension.
/// Only these fields are read; the qcow2 node validates the whole header when it opens.
public struct ImageProbe: Sendable, Equatable {
    public enum Format: String, Sendable {
        case qcow2
        case raw
    }

    /// The qcow2 header fields `info` reports (qemu-io's and qemu-img's format-specific part).
    public struct Qcow2Fields: Sendable, Equatable {
        public let version: UInt32
        public let clusterBits: UInt32
        public let sizeBytes: UInt64
        public let incompatibleFeatures: UInt64
        public let compatibleFeatures: UInt64
        public let refcountOrder: UInt32
        /// 0 zlib, 1 zstd (the v3 header's compression_type byte).
        public let compressionType: UInt8

        public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
        public var lazyRefcounts: Bool { compatibleFeatures & 1 != 0 }
        public var isCorrupt: Bool { incompatibleFeatures & (1 << 1) != 0 }
        public var hasExtendedL2: Bool { incompatibleFeatures & (1 << 4) != 0 }
        public var refcountBits: UInt64 { 1 << UInt64(refcountOrder) }
    }

    public let format: Format
    public let backingFileName: String?
    public let backingFormat: String?
    public let qcow2: Qcow2Fields?

    static let qcow2Magic: [UInt8] = [0x51, 0x46, 0x49, 0xfb]  // "QFI\xfb"
    static let backingFormatExtension: UInt32 = 0xe279_2aca
    /// The spec's limit on the backing file name.
    static let maxBackingNameBytes: UInt32 = 1023

    public init(format: Format, backingFileName: String? = nil, backingFormat: String? = nil, qcow2: Qcow2Fields? = nil) {
        self.format = format
        self.backingFileName = backingFileName
        self.backingFormat = backingFormat
        self.qcow2 = qcow2
    }

    /// Reads the start of the file at `path`. Throws when it cannot be opened or read.
    public static func probe(path: String) throws -> ImageProbe {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("Could not open '\(path)'", errno: errno) }
        defer { close(fd) }
        let head = try read(fd: fd, offset: 0, count: 65536, path: path)
        return try parse(head: head) { offset, count in try read(fd: fd, offset: offset, count: count, path: path) }
    }

    /// Parses the probe from the file's first bytes; `more` reads further ranges (the backing name
    /// may lie past the first page). A qcow2 magic with a truncated header is still qcow2: the
    /// node then refuses it with a precise error, as QEMU does.
    static func parse(head: [UInt8], more: (UInt64, Int) throws -> [UInt8]) throws -> ImageProbe {
        guard head.count >= 4, Array(head[0..<4]) == qcow2Magic else { return ImageProbe(format: .raw) }
        guard head.count >= 72 else { return ImageProbe(format: .qcow2) }
        let version = bigEndian(head, 4, 4)
        let backingOffset = bigEndian(head, 8, 8)
        let backingSize = UInt32(bigEndian(head, 16, 4))
        var name: String?
        if backingOffset != 0 && backingSize > 0 && backingSize <= maxBackingNameBytes {
            let bytes = try more(backingOffset, Int(backingSize))
            if bytes.count == Int(backingSize) { name = String(decoding: bytes, as: UTF8.self) }
        }
        // Header extensions follow the header (72 bytes in v2, header_length in v3) in the first cluster.
        var position = version >= 3 && head.count >= 104 ? Int(bigEndian(head, 100, 4)) : 72
        var format: String?
        while position + 8 <= head.count {
            let type = UInt32(bigEndian(head, position, 4))
            let length = Int(bigEndian(head, position + 4, 4))
            guard type != 0, position + 8 + length <= head.count else { break }
            if type == backingFormatExtension {
                let bytes = head[(position + 8)..<(position + 8 + length)].prefix { $0 != 0 }
                format = String(decoding: bytes, as: UTF8.self)
            }
            position += 8 + (length + 7) / 8 * 8
        }
        let v3 = version >= 3 && head.count >= 104
        let headerLength = v3 ? bigEndian(head, 100, 4) : 72
        let fields = Qcow2Fields(
            version: UInt32(version), clusterBits: UInt32(bigEndian(head, 20, 4)), sizeBytes: bigEndian(head, 24, 8),
            incompatibleFeatures: v3 ? bigEndian(head, 72, 8) : 0, compatibleFeatures: v3 ? bigEndian(head, 80, 8) : 0,
            refcountOrder: v3 ? UInt32(bigEndian(head, 96, 4)) : 4,
            compressionType: v3 && headerLength > 104 && head.count > 104 ? head[104] : 0)
        return ImageProbe(format: .qcow2, backingFileName: name, backingFormat: name == nil ? nil : format, qcow2: fields)
    }

    private static func bigEndian(_ bytes: [UInt8], _ start: Int, _ count: Int) -> UInt64 {
        bytes[start..<(start + count)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    private static func read(fd: Int32, offset: UInt64, count: Int, path: String) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let result = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if result < 0 {
                if errno == EINTR { continue }
                throw SystemError("Could not read '\(path)'", errno: errno)
            }
            if result == 0 { break }
            done += result
        }
        return Array(bytes[0..<done])
    }

    /// Where a backing file named `name` in the image at `imagePath` lives: absolute names as they
    /// are, relative ones from the image's directory (QEMU's bdrv_get_full_backing_filename).
    public static func backingPath(_ name: String, of imagePath: String) -> String {
        guard !name.hasPrefix("/"), let slash = imagePath.lastIndex(of: "/") else { return name }
        return String(imagePath[...slash]) + name
    }

    /// The path with links and dots resolved, for telling whether a chain loops; as given when it
    /// cannot be resolved.
    public static func canonicalPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
