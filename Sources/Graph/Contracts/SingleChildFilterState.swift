/// A filter node with one child that a format node may sit on instead of its protocol node
/// (blkdebug between qcow2 and its file): an opener that builds the file's instance on the
/// control executor to read metadata builds the filter's over it, so that I/O passes the filter.
public protocol SingleChildFilterState: NodeState {
    /// The link to the filtered child, as `makeInstance` looks it up.
    var filteredLink: ChildLink { get }
    /// The child's state now.
    var filteredChildState: any NodeState { get }
}
