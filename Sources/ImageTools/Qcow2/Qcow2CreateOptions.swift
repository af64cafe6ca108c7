import StrataFormatting
import StrataNodes

/// What `qemu-img create -f qcow2 -o ...` accepts, validated with qemu-img's meaning and wording.
public struct Qcow2CreateOptions: Sendable, Equatable {
    public enum Preallocation: String, Sendable { case off, metadata }
    public enum CompressionType: String, Sendable { case zlib, zstd }

    public var sizeBytes: UInt64
    /// 2 (compat=0.10) or 3 (compat=1.1).
    public var version: UInt32 = 3
    public var clusterSize: Int = 65536
    public var lazyRefcounts = false
    public var refcountBits = 16
    public var backingFile: String?
    public var backingFormat: String?
    public var extendedL2 = false
    public var compressionType: CompressionType = .zlib
    public var dataFile: String?
    public var dataFileRaw = false
    public var preallocation: Preallocation = .off

    /// The options `-o help` lists: name, type and meaning.
    public static let help: [(name: String, type: String, help: String)] = [
        ("backing_file", "str", "File name of a base image"),
        ("backing_fmt", "str", "Image format of the base image"),
        ("cluster_size", "size", "qcow2 cluster size"),
        ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
        ("compression_type", "str", "Compression method used for image cluster compression (zlib or zstd)"),
        ("data_file", "str", "File name of an external data file"),
        ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image"),
        ("extended_l2", "bool (on/off)", "Extended L2 tables"),
        ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
        ("preallocation", "str", "Preallocation mode (allowed values: off, metadata; falloc and full are not supported)"),
        ("refcount_bits", "num", "Width of a reference count entry in bits"),
        ("size", "size", "Virtual disk size"),
    ]

    public init(sizeBytes: UInt64) {
        self.sizeBytes = sizeBytes
    }

    /// Reads `options`; `size` is the positional size argument, which `-o size=` may give instead.
    public init(_ options: ImageCreateOptionString, size: UInt64?) throws(ImageOptionError) {
        var sizeBytes = size
        var compat: String?
        var values = Qcow2CreateOptions(sizeBytes: 0)
        for entry in options.entries {
            let value = entry.value
            switch entry.key {
            case "size":
                guard let parsed = ImageSizeText.parse(value) else {
                    throw .init("Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")
                }
                sizeBytes = parsed
            case "compat": compat = value
            case "cluster_size":
                guard let parsed = ImageSizeText.parse(value), parsed <= UInt64(Int32.max) else {
                    throw .init("Parameter 'cluster_size' expects a non-negative number below 2^64")
                }
                values.clusterSize = Int(parsed)
            case "lazy_refcounts": values.lazyRefcounts = try Self.bool(entry)
            case "refcount_bits":
                guard let parsed = Int(value) else { throw .init("Parameter 'refcount_bits' expects a number") }
                values.refcountBits = parsed
            case "backing_file": values.backingFile = value
            case "backing_fmt": values.backingFormat = value
            case "extended_l2": values.extendedL2 = try Self.bool(entry)
            case "compression_type":
                guard let parsed = CompressionType(rawValue: value) else {
                    throw .init("Parameter 'compression-type' does not accept value '\(value)'")
                }
                values.compressionType = parsed
            case "data_file": values.dataFile = value
            case "data_file_raw": values.dataFileRaw = try Self.bool(entry)
            case "preallocation":
                switch value {
                case "off": values.preallocation = .off
                case "metadata": values.preallocation = .metadata
                case "falloc", "full":
                    throw .init("Preallocation mode '\(value)' is not supported by strata img (use off or metadata)")
                default: throw .init("Parameter 'preallocation' does not accept value '\(value)'")
                }
            case "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode",
                 "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time":
                throw .init("Encrypted images are not supported by strata img (option '\(entry.key)')")
            default:
                throw .init("Invalid parameter '\(entry.key)'")
            }
        }
        switch compat {
        case nil, "1.1", "v3": values.version = 3
        case "0.10", "v2": values.version = 2
        case let other?: throw .init("Parameter 'version' does not accept value '\(other)'")
        }
        guard let sizeBytes else { throw .init("Image creation needs a size parameter") }
        values.sizeBytes = sizeBytes
        try values.validate()
        self = values
    }

    private static func bool(_ entry: ImageCreateOptionString.Entry) throws(ImageOptionError) -> Bool {
        switch entry.value {
        case "on": return true
        case "off": return false
        default: throw .init("Parameter '\(entry.key)' expects 'on' or 'off'")
        }
    }

    /// qcow2_co_create's checks, in its order.
    public func validate() throws(ImageOptionError) {
        let v3Hint = "(use version=v3 or greater)"
        guard sizeBytes <= UInt64(Int64.max) else { throw .init("Invalid image size specified. Must be between 0 and \(Int64.max).") }
        guard clusterSize >= 512, clusterSize <= 2 << 20, clusterSize & (clusterSize - 1) == 0 else {
            throw .init("Cluster size must be a power of two between 512 and 2048k")
        }
        if extendedL2 {
            guard version >= 3 else { throw .init("Extended L2 entries are only supported with compatibility level 1.1 and above \(v3Hint)") }
            guard clusterSize >= 16384 else { throw .init("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes") }
        }
        guard refcountBits > 0, refcountBits <= 64, refcountBits & (refcountBits - 1) == 0 else {
            throw .init("Refcount width must be a power of two and may not exceed 64 bits")
        }
        if version < 3, refcountBits != 16 {
            throw .init("Different refcount widths than 16 bits require compatibility level 1.1 or above \(v3Hint)")
        }
        if version < 3, lazyRefcounts {
            throw .init("Lazy refcounts only supported with compatibility level 1.1 and above \(v3Hint)")
        }
        if backingFormat != nil, backingFile == nil { throw .init("Backing format cannot be used without backing file") }
        if let backingFile, backingFile.utf8.count > Int(Qcow2Header.maxBackingNameBytes) {
            throw .init("Backing file name too long")
        }
        if let backingFormat, backingFormat.utf8.count > Qcow2HeaderExtension.maxBackingFormatLength {
            throw .init("Backing format name too long")
        }
        if backingFile != nil, preallocation != .off, !extendedL2 {
            throw .init("Backing file and preallocation can only be used at the same time if extended_l2 is on")
        }
        if dataFile != nil, version < 3 {
            throw .init("External data files are only supported with compatibility level 1.1 and above \(v3Hint)")
        }
        if dataFileRaw, dataFile == nil { throw .init("data-file-raw requires data-file") }
        if dataFileRaw, backingFile != nil { throw .init("Backing file and data-file-raw cannot be used at the same time") }
        if compressionType != .zlib, version < 3 {
            throw .init("Non-zlib compression type is only supported with compatibility level 1.1 and above \(v3Hint)")
        }
        // The L1 table may not exceed QEMU's 32 MiB (QCOW_MAX_L1_SIZE).
        let entryBytes = extendedL2 ? 16 : 8
        let bytesPerL1Entry = UInt64(clusterSize) * UInt64(clusterSize / entryBytes)
        let l1Entries = (sizeBytes + bytesPerL1Entry - 1) / bytesPerL1Entry
        if l1Entries * 8 > Qcow2Header.maxL1Bytes {
            throw .init("Could not resize image: Image size is too large for this cluster size")
        }
    }

    /// The sizes qemu-img prints in its "Formatting ..." line, in its order.
    public var formattingDescription: String {
        var parts = ["cluster_size=\(clusterSize)", "extended_l2=\(extendedL2 ? "on" : "off")"]
        if preallocation != .off { parts.append("preallocation=\(preallocation.rawValue)") }
        parts.append("compression_type=\(compressionType.rawValue)")
        parts.append("size=\(sizeBytes)")
        if let backingFile { parts.append("backing_file=\(backingFile)") }
        if let backingFormat { parts.append("backing_fmt=\(backingFormat)") }
        if let dataFile { parts.append("data_file=\(dataFile)") }
        if dataFileRaw { parts.append("data_file_raw=on") }
        parts.append("lazy_refcounts=\(lazyRefcounts ? "on" : "off")")
        parts.append("refcount_bits=\(refcountBits)")
        return parts.joined(separator: " ")
    }
}
