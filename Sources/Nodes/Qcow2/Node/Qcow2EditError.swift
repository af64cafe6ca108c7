/// Why a whole-image edit of a qcow2 file (make-empty, resize, backing file change) failed,
/// worded as qemu-img words it.
public struct Qcow2EditError: Error, CustomStringConvertible, Equatable {
    public let description: String

    public init(_ description: String) { self.description = description }
}
