/// Why an image tool (commit, rebase, resize) failed, in qemu-img's words; `warnings` are the
/// lines qemu-img prints as "warning:" after the error.
public struct ImageToolError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public let warnings: [String]

    public init(_ description: String, warnings: [String] = []) {
        self.description = description
        self.warnings = warnings
    }
}
