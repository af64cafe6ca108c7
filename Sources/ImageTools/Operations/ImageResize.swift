import StrataGraph
import StrataNodes

/// qemu-img resize (7.2, preallocation off): a size, or a change of size with a leading + or -;
/// shrinking only when asked for. raw files are truncated; qcow2 images change through
/// `Qcow2NodeState.resize` (L1 growth, or unmapping what lies past the new end).
public struct ImageResize: Sendable {
    public var format: String?
    public var shrink = false

    public init(format: String? = nil, shrink: Bool = false) {
        self.format = format
        self.shrink = shrink
    }

    /// What the size argument asks for: an absolute size, or a change relative to the current one.
    public enum SizeChange: Sendable, Equatable {
        case absolute(UInt64)
        case relative(Int64)

        /// Parses "SIZE", "+SIZE" or "-SIZE" (suffixes k, M, G, T as qemu-img).
        public init(parsing text: String) throws {
            var body = Substring(text)
            var sign: Int64 = 0
            if body.first == "+" { sign = 1; body = body.dropFirst() } else if body.first == "-" { sign = -1; body = body.dropFirst() }
            guard let value = OptionReader.parseSize(String(body)), value >= 0 else {
                throw ImageToolError("Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")
            }
            self = sign == 0 ? .absolute(UInt64(value)) : .relative(sign * value)
        }

        func resolved(current: UInt64) -> Int64 {
            switch self {
            case .absolute(let size): Int64(clamping: size)
            case .relative(let delta): Int64(clamping: current).addingReportingOverflow(delta).partialValue
            }
        }
    }

    /// Resizes the image at `path`; returns its new size.
    @discardableResult
    public func run(path: String, size: SizeChange) async throws -> UInt64 {
        let session = try await ImageCommit.open(path, ImageOpenOptions(format: format, openBackingChain: false))
        do {
            let newSize = try await resize(session, size: size)
            await session.close()
            return newSize
        } catch {
            await session.close()
            throw error
        }
    }

    /// Resizes an open session's image; for qcow2 the session must be closed right after.
    func resize(_ session: ImageSession, size: SizeChange) async throws -> UInt64 {
        let current = session.sizeBytes
        let total = size.resolved(current: current)
        guard total > 0 else { throw ImageToolError("New image size must be positive") }
        if UInt64(total) < current && !shrink {
            throw ImageToolError("Use the --shrink option to perform a shrink operation.", warnings: [
                "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
            ])
        }
        let newSize = UInt64(total)
        if session.isReadOnly { throw ImageToolError("Could not open '\(session.path)': Block node is read-only") }
        switch session.format {
        case "raw":
            try await session.resize(to: newSize)
        case "qcow2":
            guard let state = session.formatState() as? Qcow2NodeState else { throw ImageToolError("Image format 'qcow2' does not support resizing") }
            do {
                try await state.resize(to: newSize, executor: session.engine.control)
            } catch let error as Qcow2EditError {
                throw ImageToolError(error.description)
            }
        default:
            throw ImageToolError("Image format '\(session.format)' does not support resizing")
        }
        return newSize
    }
}
