/// A format node state that is one layer of a backing chain (qcow2): what copy-on-read, commit
/// and rebase need to walk the chain below a node and to copy whole allocation units.
public protocol BackingChainLayer: BlockStatusQuerying {
    /// The node this layer reads unallocated ranges from, by the name the graph gave it.
    var backingLayer: (nodeName: String, state: any NodeState)? { get }
    /// The unit this layer allocates in (the cluster size): copies are rounded out to it.
    var allocationUnitBytes: Int { get }
    /// Whether the layer itself holds every byte of the range, when that is known without I/O
    /// (mapping metadata cached): nil when finding out would need a read.
    func cachedAllocation(offsetBytes: UInt64, lengthBytes: Int) -> Bool?
}
