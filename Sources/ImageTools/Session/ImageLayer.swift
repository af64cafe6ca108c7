import StrataNodes

/// One image of an opened chain: the file, its format, and the nodes that serve it.
/// Layer 0 is the image named on the command line, layer i+1 its backing image.
public struct ImageLayer: Sendable, Equatable {
    public let filename: String
    public let format: String
    /// The format node (raw or qcow2) the layer above uses as its backing.
    public let nodeName: String
    /// The `file` node under it.
    public let fileNodeName: String
    /// What the file's first bytes said when it was opened.
    public let probe: ImageProbe
    /// Set for an image named `blkdebug:CONFIG:FILENAME` (QEMU's pseudo-protocol): a blkdebug
    /// node reading CONFIG (empty: no rules) sits between the format node and its file.
    public var blkdebugConfig: String? = nil
    /// A qcow2 image's external data file (its header's name, relative to the image's folder),
    /// opened as a file node of its own, as QEMU opens it.
    public var dataFilePath: String? = nil

    /// The data file's node.
    public var dataFileNodeName: String { nodeName + "-data" }

    /// The node the format node reads and writes: the file, or the blkdebug filter above it.
    public var formatChildName: String { blkdebugConfig == nil ? fileNodeName : nodeName + "-blkdebug" }

    /// `blkdebug:CONFIG:FILENAME` split into its config path and image filename.
    static func splitBlkdebug(_ path: String) -> (config: String, filename: String)? {
        guard path.hasPrefix("blkdebug:") else { return nil }
        let rest = path.dropFirst("blkdebug:".count)
        guard let colon = rest.firstIndex(of: ":") else { return nil }
        return (String(rest[..<colon]), String(rest[rest.index(after: colon)...]))
    }
}
