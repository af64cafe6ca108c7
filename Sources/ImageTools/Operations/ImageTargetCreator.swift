import Glibc
import StrataRuntime

/// Creates a conversion target of a given format and size, as qemu-img convert creates one
/// unless -n is given. One creator per format; qcow2's comes with the image creator, registered
/// by adding it to `ImageTargetCreators.byFormat`.
public protocol ImageTargetCreator: Sendable {
    /// Creates (or truncates) `path` as an empty image of `sizeBytes`; `options` are -o's
    /// key=value pairs. Returns whether the new image reads as zeros everywhere.
    func create(path: String, sizeBytes: UInt64, options: [String: String]) async throws -> Bool
}

/// raw: a sparse file of the size; it reads as zeros, so zero ranges need not be written.
public struct RawTargetCreator: ImageTargetCreator {
    public init() {}

    public func create(path: String, sizeBytes: UInt64, options: [String: String]) async throws -> Bool {
        if let unknown = options.keys.sorted().first(where: { $0 != "size" }) {
            throw ImageSessionError.notSupported("Invalid parameter '\(unknown)' for the raw format")
        }
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("Could not create '\(path)'", errno: errno) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(sizeBytes)) == 0 else { throw SystemError("Could not resize '\(path)'", errno: errno) }
        return true
    }
}

public enum ImageTargetCreators {
    /// The formats convert can create.
    public static let byFormat: [String: any ImageTargetCreator] = ["raw": RawTargetCreator(), "qcow2": Qcow2TargetCreator()]
}
