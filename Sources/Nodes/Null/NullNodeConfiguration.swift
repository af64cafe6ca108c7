import StrataGraph

/// The validated options of a null-co or null-aio node.
struct NullNodeConfiguration: NodeConfiguration {
    /// QEMU's default size for null-co: 1 GiB.
    static let defaultSizeBytes: Int64 = 1 << 30

    let sizeBytes: UInt64
    let readZeroes: Bool
    let latencyNs: UInt64
    let readOnly: Bool
    /// null-aio: every request completes through the queue's ring.
    let throughRing: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader, throughRing: Bool) throws(GraphError) {
        self.throughRing = throughRing
        sizeBytes = UInt64(try reader.integer("size", default: Self.defaultSizeBytes, range: 0...Int64.max))
        readZeroes = try reader.bool("read-zeroes", default: false)
        latencyNs = UInt64(try reader.integer("latency-ns", default: 0, range: 0...Int64.max))
        // Every QEMU node accepts the generic read-only option; here it makes writes fail with EROFS.
        readOnly = try reader.bool("read-only", default: false)
        try reader.finish()
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        NullNodeState(configuration: self)
    }
}
