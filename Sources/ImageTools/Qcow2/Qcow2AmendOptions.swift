import StrataFormatting
import StrataNodes

/// What `qemu-img amend -o` asks of a qcow2 image, parsed as QemuOpts does against qcow2's
/// amend option list (qcow2_amend_opts in QEMU 7.2): values are type-checked in the order given,
/// names outside the list are refused, and create-only names get qemu-img's hint.
public struct Qcow2AmendOptions: Sendable, Equatable {
    public var compat: String?
    public var sizeBytes: UInt64?
    public var backingFile: String?
    public var backingFormat: String?
    public var dataFile: String?
    public var dataFileRaw: Bool?
    public var lazyRefcounts: Bool?
    public var refcountBits: UInt64?
    /// `encrypt.*` names given (LUKS key slot management).
    public var encryptionKeys: [String] = []

    /// The amend option list, as `-o help` prints it (sorted by name, as qemu-img does).
    public static let help: [(name: String, type: String, help: String)] = [
        ("backing_file", "str", "File name of a base image"),
        ("backing_fmt", "str", "Image format of the base image"),
        ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
        ("data_file", "str", "File name of an external data file"),
        ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image"),
        ("encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"),
        ("encrypt.keyslot", "num", "Select a single keyslot to modify explicitly"),
        ("encrypt.new-secret", "str", "New secret to set in the matching keyslots. Empty string to erase"),
        ("encrypt.old-secret", "str", "Select all keyslots that match this password"),
        ("encrypt.state", "str", "Select new state of affected keyslots (active/inactive)"),
        ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
        ("refcount_bits", "num", "Width of a reference count entry in bits"),
        ("size", "size", "Virtual disk size"),
    ]

    /// Names only `create` takes: amend refuses them with a hint.
    static let createOnly: Set<String> = [
        "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.ivgen-alg",
        "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "cluster_size", "extended_l2", "preallocation", "compression_type",
    ]

    public init() {}

    public init(_ options: ImageCreateOptionString) throws(ImageOptionError) {
        for entry in options.entries {
            let value = entry.value
            switch entry.key {
            case "compat": compat = value
            case "size":
                guard let parsed = ImageSizeText.parse(value) else {
                    throw .init("Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")
                }
                sizeBytes = parsed
            case "backing_file": backingFile = value
            case "backing_fmt": backingFormat = value
            case "data_file": dataFile = value
            case "data_file_raw": dataFileRaw = try Self.bool(entry)
            case "lazy_refcounts": lazyRefcounts = try Self.bool(entry)
            case "refcount_bits":
                guard let parsed = UInt64(value) else { throw .init("Parameter 'refcount_bits' expects a number") }
                refcountBits = parsed
            case "encrypt.state", "encrypt.keyslot", "encrypt.old-secret", "encrypt.new-secret", "encrypt.iter-time":
                encryptionKeys.append(entry.key)
            default:
                let hint = Self.createOnly.contains(entry.key) ? "\nThis option is only supported for image creation" : ""
                throw .init("Invalid parameter '\(entry.key)'\(hint)")
            }
        }
    }

    /// QEMU's qapi_bool_parse.
    private static func bool(_ entry: ImageCreateOptionString.Entry) throws(ImageOptionError) -> Bool {
        switch entry.value.lowercased() {
        case "on", "yes", "true", "y": return true
        case "off", "no", "false", "n": return false
        default: throw .init("Parameter '\(entry.key)' expects 'on' or 'off'")
        }
    }
}
