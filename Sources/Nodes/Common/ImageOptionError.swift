/// An image creation, measure or check option was refused; the message is qemu-img's meaning.
public struct ImageOptionError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}
