/// qemu-img map's view of an image: runs of equal block status through the backing chain,
/// merged as qemu-img merges them, and its two renderings (qemu-img 7.2's text and JSON).
public struct ImageMapEntry: Sendable, Equatable {
    public var start: UInt64
    public var length: UInt64
    public let depth: Int
    public let present: Bool
    public let zero: Bool
    public let data: Bool
    public let offset: UInt64?
    public let filename: String

    /// qemu-img's mapentry_mergeable: same status and layer, host offsets contiguous.
    func merges(with next: ImageMapEntry) -> Bool {
        guard depth == next.depth, present == next.present, zero == next.zero, data == next.data, filename == next.filename else { return false }
        switch (offset, next.offset) {
        case (nil, nil): return true
        case (let a?, let b?): return a + length == b
        default: return false
        }
    }

    public var json: String {
        var text = "{ \"start\": \(start), \"length\": \(length), \"depth\": \(depth), \"present\": \(present), \"zero\": \(zero), \"data\": \(data)"
        if let offset { text += ", \"offset\": \(offset)" }
        return text + "}"
    }

    /// The human line ("%#-16x" columns), only for data that is not zeros, as qemu-img prints.
    public var human: String? {
        guard data, !zero, let offset else { return nil }
        func column(_ value: UInt64) -> String {
            let text = value == 0 ? "0" : "0x" + String(value, radix: 16)
            return text + String(repeating: " ", count: max(0, 16 - text.count))
        }
        return column(start) + column(length) + column(offset) + filename
    }
}

public enum ImageMap {
    public static let humanHeader = "Offset          Length          Mapped to       File"

    /// The merged entries from `start` up to `end` (default: the image's end).
    public static func entries(of session: ImageSession, start: UInt64 = 0, end: UInt64? = nil) async throws -> [ImageMapEntry] {
        let stop = min(end ?? session.sizeBytes, session.sizeBytes)
        var entries: [ImageMapEntry] = []
        var offset = start
        while offset < stop {
            // qemu-img asks for at most 1 GiB at a time.
            let extent = try await session.blockStatus(offsetBytes: offset, maxLengthBytes: min(1 << 30, stop - offset))
            guard extent.lengthBytes > 0 else { break }
            let depth = extent.depth ?? 0
            let next = ImageMapEntry(start: offset, length: extent.lengthBytes, depth: depth, present: extent.isAllocated, zero: extent.isZero,
                                     data: extent.isData, offset: extent.hostOffset,
                                     filename: session.layers[depth].dataFilePath ?? session.layers[depth].filename)
            if let last = entries.last, last.merges(with: next) {
                entries[entries.count - 1].length += next.length
            } else {
                entries.append(next)
            }
            offset += extent.lengthBytes
        }
        return entries
    }

    public static func json(_ entries: [ImageMapEntry]) -> String {
        "[" + entries.map(\.json).joined(separator: ",\n") + "]"
    }

    public static func human(_ entries: [ImageMapEntry]) -> String {
        ([humanHeader] + entries.compactMap(\.human)).joined(separator: "\n")
    }

    /// Human text stops, as qemu-img's does, at data it cannot place in a file (compressed
    /// clusters): the lines before it, and whether it stopped.
    public static func humanUntilUnmappable(_ entries: [ImageMapEntry]) -> (text: String, stopped: Bool) {
        let stop = entries.firstIndex { $0.data && $0.offset == nil }
        let shown = stop.map { Array(entries[..<$0]) } ?? entries
        return (human(shown), stop != nil)
    }
}
