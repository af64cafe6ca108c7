import StrataGraph
import StrataImageTools

/// blockdev-create's `options` (QEMU's BlockdevCreateOptions) for the drivers Strata can create:
/// `file` (a host file of a size, with a preallocation mode) and `qcow2` (an image written into an
/// existing node). Checked as QEMU's QAPI checks them, with its texts.
public enum BlockdevCreateOptions: Sendable {
    case file(filename: String, sizeBytes: UInt64, preallocation: FilePreallocation)
    case qcow2(file: String, dataFile: String?, options: Qcow2CreateOptions)

    public enum FilePreallocation: String, Sendable {
        case off
        case falloc
        case full
    }

    public init(_ options: [String: JSONValue]) throws(JobError) {
        guard case .string(let driver)? = options["driver"] else { throw JobError("Parameter 'options.driver' is missing") }
        var keys = Set(options.keys)
        keys.remove("driver")
        func take(_ key: String) -> JSONValue? {
            keys.remove(key)
            return options[key]
        }
        func string(_ key: String) throws(JobError) -> String? {
            switch take(key) {
            case nil: return nil
            case .string(let text)?: return text
            default: throw JobError("Invalid parameter type for 'options.\(key)', expected: string")
            }
        }
        func integer(_ key: String) throws(JobError) -> UInt64? {
            switch take(key) {
            case nil: return nil
            case .int(let value)? where value >= 0: return UInt64(value)
            case .int?: throw JobError("Parameter 'options.\(key)' expects a non-negative value")
            default: throw JobError("Invalid parameter type for 'options.\(key)', expected: integer")
            }
        }
        func bool(_ key: String) throws(JobError) -> Bool? {
            switch take(key) {
            case nil: return nil
            case .bool(let value)?: return value
            default: throw JobError("Invalid parameter type for 'options.\(key)', expected: boolean")
            }
        }
        func required<T>(_ value: T?, _ key: String) throws(JobError) -> T {
            guard let value else { throw JobError("Parameter 'options.\(key)' is missing") }
            return value
        }
        /// A BlockdevRef: Strata takes a node name (QEMU also takes inline options).
        func nodeName(_ key: String) throws(JobError) -> String? {
            switch take(key) {
            case nil: return nil
            case .string(let name)?: return name
            default: throw JobError("Parameter 'options.\(key)': give the name of a node added with blockdev-add")
            }
        }
        func finish() throws(JobError) {
            if let extra = keys.sorted().first { throw JobError("Parameter 'options.\(extra)' is unexpected") }
        }

        switch driver {
        case "file":
            let filename = try required(try string("filename"), "filename")
            let size = try required(try integer("size"), "size")
            let preallocation = try string("preallocation") ?? "off"
            _ = try bool("nocow")  // btrfs only; nothing to do elsewhere, as QEMU
            _ = try integer("extent-size-hint")
            try finish()
            guard let mode = FilePreallocation(rawValue: preallocation) else {
                throw JobError(preallocation == "metadata" ? "Unsupported preallocation mode 'metadata'"
                                                           : "Parameter 'options.preallocation' does not accept value '\(preallocation)'")
            }
            self = .file(filename: filename, sizeBytes: size, preallocation: mode)
        case "qcow2":
            let file = try required(try nodeName("file"), "file")
            let dataFile = try nodeName("data-file")
            var values = Qcow2CreateOptions(sizeBytes: try required(try integer("size"), "size"))
            values.dataFileRaw = try bool("data-file-raw") ?? false
            values.extendedL2 = try bool("extended-l2") ?? false
            switch try string("version") {
            case nil, "v3": values.version = 3
            case "v2": values.version = 2
            case let other?: throw JobError("Parameter 'options.version' does not accept value '\(other)'")
            }
            values.backingFile = try string("backing-file")
            values.backingFormat = try string("backing-fmt")
            if take("encrypt") != nil { throw JobError("Strata does not create encrypted qcow2 images") }
            if let size = try integer("cluster-size") { values.clusterSize = Int(clamping: size) }
            switch try string("preallocation") {
            case nil, "off": values.preallocation = .off
            case "metadata": values.preallocation = .metadata
            case let other?: throw JobError("Unsupported preallocation mode '\(other)'")
            }
            values.lazyRefcounts = try bool("lazy-refcounts") ?? false
            if let bits = try integer("refcount-bits") { values.refcountBits = Int(clamping: bits) }
            switch try string("compression-type") {
            case nil, "zlib": values.compressionType = .zlib
            case "zstd": values.compressionType = .zstd
            case let other?: throw JobError("Parameter 'options.compression-type' does not accept value '\(other)'")
            }
            try finish()
            if values.dataFileRaw && dataFile == nil { throw JobError("'data-file-raw' requires 'data-file'") }
            self = .qcow2(file: file, dataFile: dataFile, options: values)
        default:
            // QEMU's other drivers either have no create options (any option is unexpected) or are
            // not built into Strata.
            try finish()
            throw JobError("Driver does not support blockdev-create")
        }
    }
}
