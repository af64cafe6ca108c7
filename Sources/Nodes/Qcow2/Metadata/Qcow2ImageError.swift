/// An image could not be read, checked or repaired by the offline tools; the message says why.
public struct Qcow2ImageError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}
