import StrataGraph
import StrataRuntime

/// QEMU's blkdebug request constraints: `align`, `max-transfer`, `opt-write-zero`,
/// `max-write-zero`, `opt-discard`, `max-discard` (bytes; 0 for none), validated with QEMU's
/// messages. In QEMU the generic block layer meets a node's limits before calling it; Strata
/// has no such layer, so the filter meets them itself (`BlkdebugLimitedIO`): the child only ever
/// sees requests that keep them.
struct BlkdebugLimits: Sendable, Equatable {
    let align: Int
    let maxTransfer: Int
    let optWriteZero: Int
    let maxWriteZero: Int
    let optDiscard: Int
    let maxDiscard: Int

    /// Any constraint set: requests then take the filter's own path.
    var isActive: Bool { align > 1 || maxTransfer > 0 || optWriteZero > 0 || maxWriteZero > 0 || optDiscard > 0 || maxDiscard > 0 }

    /// The alignment reads and writes are padded to (1 for none).
    var requestAlignment: Int { max(align, 1) }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        let node = reader.nodeName
        func size(_ key: String) throws(GraphError) -> Int { Int(try reader.integer(key, default: 0, range: 0...Int64.max)) }
        func refuse(_ key: String, _ value: Int) -> GraphError {
            .openFailed(node: node, reason: "Cannot meet constraints with \(key) \(value)")
        }
        align = try size("align")
        if align != 0 && (align >= Int(Int32.max) || align & (align - 1) != 0) { throw refuse("align", align) }
        let alignment = max(align, 1)
        maxTransfer = try size("max-transfer")
        if maxTransfer != 0 && (maxTransfer >= Int(Int32.max) || maxTransfer % alignment != 0) { throw refuse("max-transfer", maxTransfer) }
        optWriteZero = try size("opt-write-zero")
        if optWriteZero != 0 && (optWriteZero >= Int(Int32.max) || optWriteZero % alignment != 0) { throw refuse("opt-write-zero", optWriteZero) }
        maxWriteZero = try size("max-write-zero")
        if maxWriteZero != 0 && (maxWriteZero >= Int(Int32.max) || maxWriteZero % max(optWriteZero, alignment) != 0) {
            throw refuse("max-write-zero", maxWriteZero)
        }
        optDiscard = try size("opt-discard")
        if optDiscard != 0 && (optDiscard >= Int(Int32.max) || optDiscard % alignment != 0) { throw refuse("opt-discard", optDiscard) }
        maxDiscard = try size("max-discard")
        if maxDiscard != 0 && (maxDiscard >= Int(Int32.max) || maxDiscard % max(optDiscard, alignment) != 0) {
            throw refuse("max-discard", maxDiscard)
        }
    }

    /// The pieces `range` goes to the child in: cut where `boundary` divides the offset, and no
    /// longer than `maxLength` (0: unlimited).
    static func pieces(of range: Range<UInt64>, boundary: Int, maxLength: Int) -> [Range<UInt64>] {
        var pieces: [Range<UInt64>] = []
        var start = range.lowerBound
        while start < range.upperBound {
            var end = range.upperBound
            if maxLength > 0 { end = min(end, start + UInt64(maxLength)) }
            if boundary > 1 {
                let nextBoundary = (start / UInt64(boundary) + 1) * UInt64(boundary)
                if nextBoundary < end && start % UInt64(boundary) != 0 { end = nextBoundary }
            }
            pieces.append(start..<end)
            start = end
        }
        return pieces
    }
}
