import StrataNodes

/// qcow2: an empty image laid out as qemu-img creates it, with -o's options. It reads as zeros
/// unless it has a backing file (-B, or -o backing_file).
public struct Qcow2TargetCreator: ImageTargetCreator {
    public init() {}

    public func create(path: String, sizeBytes: UInt64, options: [String: String]) async throws -> Bool {
        let entries = options.keys.sorted().map { ImageCreateOptionString.Entry(key: $0, value: options[$0]!) }
        let parsed = try Qcow2CreateOptions(ImageCreateOptionString(entries: entries), size: options["size"] == nil ? sizeBytes : nil)
        try parsed.validate()
        try await Qcow2Creator.create(path: path, options: parsed)
        return parsed.backingFile == nil
    }
}
