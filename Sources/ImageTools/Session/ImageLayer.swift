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
}
