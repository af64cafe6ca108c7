import StrataImageTools
import StrataNodes

/// Guesses an image's format from its first bytes, as qemu-img does without `-f`.
enum ImageInfoProbe {
    static func format(_ path: String) async throws -> String {
        let io = try Qcow2FileIO(path: path, writable: false)
        let magic = try await io.read(offset: 0, count: 4)
        return magic == [0x51, 0x46, 0x49, 0xfb] ? "qcow2" : "raw"
    }
}
