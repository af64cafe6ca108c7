import Glibc
import StrataGraph
import StrataNodes

/// qemu-img rebase (7.2). Unsafe (-u) only changes the backing file name and format the image
/// records. Safe mode first makes the image read the same over the new backing file as over the
/// old one: every range the image does not hold where the old and new backing data differ (by
/// 512-byte sector, the old chain and the new read as zeros past their ends) is written into the
/// image with the old data; then the name and format change. An empty name means no backing file.
public struct ImageRebase: Sendable {
    public var format: String?
    public var cacheMode = "writeback"
    /// -F: the new backing file's format; required unless the new backing name is empty.
    public var backingFormat: String?
    public var unsafe = false
    public var progress: (@Sendable (Double) -> Void)?

    public static let chunkBytes: UInt64 = 2 << 20
    static let sectorBytes = 512

    public init() {}

    public func run(path: String, backing: String) async throws {
        let session = try await ImageCommit.open(path, ImageOpenOptions(format: format, cacheMode: cacheMode, openBackingChain: !unsafe))
        do {
            guard session.format == "qcow2" else {
                throw ImageToolError("Could not change the backing file to '\(backing)': Operation not supported")
            }
            if !unsafe { try await copyDifferences(into: session, path: path, backing: backing) }
            guard backing.isEmpty || backingFormat != nil else {
                throw ImageToolError("Could not change the backing file to '\(backing)': backing format must be specified")
            }
            // The session stays open (its locks held) while the header changes; it writes nothing more.
            let flushed = await session.flush()
            guard flushed.isOK else { throw ImageToolError("Could not flush '\(path)': \(flushed)") }
            do {
                try Qcow2BackingNameUpdate.update(path: path, backingFile: backing.isEmpty ? nil : backing,
                                                  backingFormat: backing.isEmpty ? nil : backingFormat)
            } catch {
                throw ImageToolError("Could not change the backing file to '\(backing)': \(error)")
            }
        } catch {
            await session.close()
            throw error
        }
        await session.close()
    }

    private func copyDifferences(into session: ImageSession, path: String, backing: String) async throws {
        var newBacking: ImageSession?
        if !backing.isEmpty {
            let resolved = backing.hasPrefix("/") ? backing : Self.directory(of: path) + backing
            do {
                newBacking = try await ImageSession.open(resolved, options: ImageOpenOptions(format: backingFormat, readOnly: true, cacheMode: cacheMode))
            } catch {
                throw ImageToolError("Could not open new backing file '\(backing)': \(error)")
            }
        }
        do {
            try await copyDifferences(into: session, newBacking: newBacking)
        } catch {
            await newBacking?.close()
            throw error
        }
        await newBacking?.close()
    }

    private func copyDifferences(into session: ImageSession, newBacking: ImageSession?) async throws {
        let size = session.sizeBytes
        let oldBackingSize = session.layers.count > 1 ? session.formatState(depth: 1).sizeBytes : 0
        let newBackingSize = newBacking?.sizeBytes ?? 0
        let old = AlignedBuffer(count: Int(Self.chunkBytes))
        let new = AlignedBuffer(count: Int(Self.chunkBytes))
        var offset: UInt64 = 0
        progress?(0)
        while offset < size {
            var length = min(Self.chunkBytes, size - offset)
            let own = try await session.layerBlockStatus(depth: 0, offsetBytes: offset, maxLengthBytes: length)
            guard own.lengthBytes > 0 else { throw ImageToolError("Unexpected end of the image at offset \(offset)") }
            length = own.lengthBytes
            if own.isAllocated {
                offset += length
                continue
            }
            // Reading the image where it holds nothing reads the old backing chain (zeros past its end).
            let oldIsZero = offset >= oldBackingSize
            if !oldIsZero { length = min(length, oldBackingSize - offset) }
            if offset < newBackingSize { length = min(length, newBackingSize - offset) }
            let count = Int(length)
            if oldIsZero {
                old.slice(from: 0, count: count).zero()
            } else {
                try await read(session, offset, old.slice(from: 0, count: count))
            }
            if let newBacking, offset < newBackingSize {
                try await read(newBacking, offset, new.slice(from: 0, count: count))
            } else {
                new.slice(from: 0, count: count).zero()
            }
            try await writeDifferences(session, offset: offset, count: count, old: old, new: new, oldIsZero: oldIsZero)
            offset += length
            progress?(Double(offset) / Double(size))
        }
        progress?(1)
    }

    /// Writes the runs of sectors where `old` and `new` differ, with the old data.
    private func writeDifferences(_ session: ImageSession, offset: UInt64, count: Int, old: AlignedBuffer, new: AlignedBuffer,
                                  oldIsZero: Bool) async throws {
        let sector = Self.sectorBytes
        var start = 0
        while start < count {
            let differs = !Self.equal(old, new, start, min(sector, count - start))
            var end = min(start + sector, count)
            while end < count, !Self.equal(old, new, end, min(sector, count - end)) == differs { end = min(end + sector, count) }
            if differs {
                let request = oldIsZero
                    ? BlockRequest(operation: .writeZeroes, offsetBytes: offset + UInt64(start), lengthBytes: end - start)
                    : BlockRequest(operation: .write, offsetBytes: offset + UInt64(start), lengthBytes: end - start,
                                   buffer: old.slice(from: start, count: end - start))
                let status = await session.submit(request)
                guard status.isOK else { throw ImageToolError("error while writing at byte \(request.offsetBytes): \(status)") }
            }
            start = end
        }
    }

    private func read(_ session: ImageSession, _ offset: UInt64, _ buffer: IOBuffer) async throws {
        let status = await session.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: buffer.count, buffer: buffer))
        guard status.isOK else { throw ImageToolError("error while reading at byte \(offset): \(status)") }
    }

    private static func equal(_ a: AlignedBuffer, _ b: AlignedBuffer, _ start: Int, _ count: Int) -> Bool {
        memcmp(a.base + start, b.base + start, count) == 0
    }

    private static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[...slash])
    }
}
