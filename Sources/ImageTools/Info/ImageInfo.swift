import Glibc
import StrataEngine
import StrataFormatting
import StrataNodes

/// What `qemu-img info` reports about one image (qcow2 or raw), with its JSON in qemu-img 7.2's
/// shape and key order and its human-readable text.
public struct ImageInfo: Sendable {
    public let filename: String
    public let format: String
    public let virtualSize: UInt64
    /// Bytes the image takes on its disk; nil for a remote image, whose server keeps that to itself.
    public let actualSize: UInt64?
    public let qcow2: Qcow2OfflineImage?
    public let bitmaps: [Qcow2Bitmap]
    /// The backing file as a path usable from here (relative names resolve next to the image).
    public var fullBackingFilename: String? {
        guard let name = qcow2?.backingFileName else { return nil }
        return Self.resolve(name, relativeTo: filename)
    }

    /// Opens `path` read-only; `format` nil probes (qcow2 magic, else raw) as qemu-img does.
    public static func read(path: String, format: String?) async throws -> ImageInfo {
        if DriverCatalog.registry.protocolDriver(forFilename: path) != nil { return try await readRemote(path: path, format: format) }
        let io = try Qcow2FileIO(path: path, writable: false)
        let size = try await io.sizeBytes()
        let magic = try await io.read(offset: 0, count: 4)
        let probed = magic.loadBE32(at: 0) == Qcow2Header.magic ? "qcow2" : "raw"
        let chosen = format ?? probed
        switch chosen {
        case "qcow2":
            let image = try await Qcow2OfflineImage.load(io: io, name: path)
            let bitmaps = try await image.bitmaps(io: io)
            return ImageInfo(filename: path, format: "qcow2", virtualSize: image.virtualSize, actualSize: try io.allocatedBytes(),
                             qcow2: image, bitmaps: bitmaps)
        case "raw":
            return ImageInfo(filename: path, format: "raw", virtualSize: size, actualSize: try io.allocatedBytes(), qcow2: nil, bitmaps: [])
        default:
            throw Qcow2ImageError("Unknown driver '\(chosen)'")
        }
    }

    /// An image behind a protocol node (`rbd:`, `iscsi://`, `nbd://`): its format and size through
    /// the node; the disk size is unavailable, as qemu-img reports it.
    static func readRemote(path: String, format: String?) async throws -> ImageInfo {
        let session = try await ImageSession.open(path, options: ImageOpenOptions(format: format, readOnly: true))
        let info = ImageInfo(filename: path, format: session.format, virtualSize: session.sizeBytes, actualSize: nil, qcow2: nil, bitmaps: [])
        _ = await session.close()
        return info
    }

    /// A relative backing name is relative to the directory of the image that names it.
    public static func resolve(_ name: String, relativeTo image: String) -> String {
        guard !name.hasPrefix("/"), let slash = image.lastIndex(of: "/") else { return name }
        return String(image[...slash]) + name
    }

    public var json: OrderedJSON {
        var fields: [(String, OrderedJSON)] = []
        if let image = qcow2 {
            if let format = image.backingFormat { fields.append(("backing-filename-format", .string(format))) }
            if !image.snapshots.isEmpty {
                fields.append(("snapshots", .array(image.snapshots.map { snapshot in
                    .object([
                        ("icount", .uint(snapshot.icount ?? 0)),
                        ("vm-clock-nsec", .uint(snapshot.vmClockNanoseconds % 1_000_000_000)),
                        ("name", .string(snapshot.name)),
                        ("date-sec", .uint(UInt64(snapshot.dateSeconds))),
                        ("date-nsec", .uint(UInt64(snapshot.dateNanoseconds))),
                        ("vm-clock-sec", .uint(snapshot.vmClockNanoseconds / 1_000_000_000)),
                        ("id", .string(snapshot.id)),
                        ("vm-state-size", .uint(snapshot.vmStateSize)),
                    ])
                })))
            }
        }
        fields.append(("virtual-size", .uint(virtualSize)))
        fields.append(("filename", .string(filename)))
        if let image = qcow2 { fields.append(("cluster-size", .uint(image.clusterSize))) }
        fields.append(("format", .string(format)))
        if let actualSize { fields.append(("actual-size", .uint(actualSize))) }
        if let image = qcow2 {
            var data: [(String, OrderedJSON)] = [("compat", .string(image.version >= 3 ? "1.1" : "0.10"))]
            data.append(("compression-type", .string(image.compressionType == 1 ? "zstd" : "zlib")))
            if image.version >= 3 { data.append(("lazy-refcounts", .bool(image.lazyRefcounts))) }
            if !bitmaps.isEmpty {
                data.append(("bitmaps", .array(bitmaps.map { bitmap in
                    .object([("flags", .array(bitmap.flagNames.map { .string($0) })), ("name", .string(bitmap.name)),
                             ("granularity", .uint(bitmap.granularity))])
                })))
            }
            data.append(("refcount-bits", .int(Int64(image.refcountBits))))
            if image.version >= 3 {
                if let dataFile = image.dataFileName {
                    data.append(("data-file", .string(dataFile)))
                    data.append(("data-file-raw", .bool(image.dataFileRaw)))
                }
                data.append(("corrupt", .bool(image.isCorrupt)))
                data.append(("extended-l2", .bool(image.extendedL2)))
            }
            fields.append(("format-specific", .object([("type", .string("qcow2")), ("data", .object(data))])))
            if let backing = image.backingFileName {
                fields.append(("full-backing-filename", .string(fullBackingFilename ?? backing)))
                fields.append(("backing-filename", .string(backing)))
            }
            fields.append(("dirty-flag", .bool(image.isDirty)))
        } else {
            fields.append(("dirty-flag", .bool(false)))
        }
        return .object(fields)
    }

    public var human: String {
        var text = "image: \(filename)\nfile format: \(format)\n"
        text += "virtual size: \(Self.sizeText(virtualSize)) (\(virtualSize) bytes)\n"
        text += "disk size: \(actualSize.map(Self.sizeText) ?? "unavailable")\n"
        guard let image = qcow2 else { return text }
        text += "cluster_size: \(image.clusterSize)\n"
        if let backing = image.backingFileName {
            let full = fullBackingFilename ?? backing
            text += "backing file: \(backing)\(full != backing ? " (actual path: \(full))" : "")\n"
        }
        if let format = image.backingFormat { text += "backing file format: \(format)\n" }
        if image.isDirty { text += "cleanly shut down: no\n" }
        if !image.snapshots.isEmpty { text += Self.snapshotList(image.snapshots) }
        text += "Format specific information:\n"
        text += "    compat: \(image.version >= 3 ? "1.1" : "0.10")\n"
        text += "    compression type: \(image.compressionType == 1 ? "zstd" : "zlib")\n"
        if image.version >= 3 { text += "    lazy refcounts: \(image.lazyRefcounts)\n" }
        if !bitmaps.isEmpty {
            text += "    bitmaps:\n"
            for (index, bitmap) in bitmaps.enumerated() {
                text += "        [\(index)]:\n            flags:\n"
                for (flagIndex, flag) in bitmap.flagNames.enumerated() { text += "                [\(flagIndex)]: \(flag)\n" }
                text += "            name: \(bitmap.name)\n            granularity: \(bitmap.granularity)\n"
            }
        }
        text += "    refcount bits: \(image.refcountBits)\n"
        if image.version >= 3 {
            if let dataFile = image.dataFileName {
                text += "    data file: \(dataFile)\n    data file raw: \(image.dataFileRaw)\n"
            }
            text += "    corrupt: \(image.isCorrupt)\n    extended l2: \(image.extendedL2)\n"
        }
        return text
    }

    /// qemu-img's snapshot table ("Snapshot list:", a heading and a line per snapshot).
    public static func snapshotList(_ snapshots: [Qcow2Snapshot]) -> String {
        var text = "Snapshot list:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n"
        for snapshot in snapshots { text += snapshotLine(snapshot) + "\n" }
        return text
    }

    private static func snapshotLine(_ snapshot: Qcow2Snapshot) -> String {
        func padded(_ text: String, _ width: Int, left: Bool = true) -> String {
            let fill = String(repeating: " ", count: max(0, width - text.count))
            return left ? text + fill : fill + text
        }
        var time = time_t(snapshot.dateSeconds)
        var parts = tm()
        localtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let date = "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
        let clock = snapshot.vmClockNanoseconds
        let seconds = clock / 1_000_000_000
        let clockText = "\(seconds / 3600 < 10 ? "0" : "")\(seconds / 3600):\(two(Int32(seconds / 60 % 60))):\(two(Int32(seconds % 60))).\(String(repeating: "0", count: 3 - String(clock / 1_000_000 % 1000).count))\(clock / 1_000_000 % 1000)"
        return padded(snapshot.id, 10) + padded(snapshot.name, 18) + padded(sizeText(snapshot.vmStateSize), 7, left: false)
            + " " + date + " " + clockText + padded(snapshot.icount.map { $0 == .max ? "" : "\($0)" } ?? "", 11, left: false)
    }

    /// qemu's size_to_str: the largest binary unit keeping the value below 1024, "%0.3g".
    public static func sizeText(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        // Three significant digits, trailing zeros dropped, as %g.
        let digits = value >= 100 ? 0 : value >= 10 ? 1 : 2
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        var text = rounded == rounded.rounded() ? "\(Int(rounded))" : "\(rounded)"
        if text.contains(".") {
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
        }
        return "\(text) \(units[unit])"
    }
}
