import Glibc
import StrataGraph
import StrataNodes

/// qemu-img commit (7.2): copies what the image and the layers above `base` hold into `base`
/// (by default its backing file), growing the base first when it is smaller, flushes, and unless
/// `drop` (-d, implied by -b) empties the image so that it reads the base's data.
///
/// The chain is read through a session opened read-only without locks, the base written through
/// a session of its own (its locks taken as a writer), and the image emptied through a third,
/// writable session once the others are closed.
public struct ImageCommit: Sendable {
    public var format: String?
    public var cacheMode = "writeback"
    /// The base image as named on the command line (-b); nil: the image's backing file.
    public var base: String?
    public var drop = false
    /// Called with the fraction done (-p).
    public var progress: (@Sendable (Double) -> Void)?

    public static let chunkBytes: UInt64 = 2 << 20

    public init() {}

    public func run(path: String) async throws {
        let chain = try await Self.open(path, ImageOpenOptions(format: format, readOnly: true, forceShare: true, cacheMode: cacheMode))
        let baseDepth: Int
        do {
            baseDepth = try Self.baseDepth(of: chain, named: base, path: path)
        } catch {
            await chain.close()
            throw error
        }
        let baseLayer = chain.layers[baseDepth]
        let target: ImageSession
        do {
            target = try await ImageSession.open(baseLayer.filename, options: ImageOpenOptions(format: baseLayer.format, cacheMode: cacheMode))
        } catch {
            await chain.close()
            throw ImageToolError("Could not open '\(baseLayer.filename)': \(error)")
        }
        var writer = target
        do {
            if target.sizeBytes < chain.sizeBytes {
                _ = try await ImageResize(format: baseLayer.format).resize(target, size: .absolute(chain.sizeBytes))
                // A qcow2 node's view of its header is stale after a resize: open the base again.
                await target.close()
                writer = try await ImageSession.open(baseLayer.filename, options: ImageOpenOptions(format: baseLayer.format, cacheMode: cacheMode))
            }
            try await copy(from: chain, above: baseDepth, into: writer)
            let status = await writer.close()
            guard status.isOK else { throw ImageToolError("Could not flush the base image: \(status)") }
        } catch {
            await writer.close()
            await target.close()
            await chain.close()
            throw error
        }
        await chain.close()
        // -b implies -d: the layers between the image and the base would read wrong data.
        guard !drop && base == nil else { return }
        let top = try await Self.open(path, ImageOpenOptions(format: format, cacheMode: cacheMode, openBackingChain: false))
        do {
            guard let state = top.formatState() as? Qcow2NodeState else {
                throw ImageToolError("Image format '\(top.format)' cannot be emptied")
            }
            try await state.makeEmpty(executor: top.engine.control)
        } catch let error as Qcow2EditError {
            await top.close()
            throw ImageToolError("Could not empty \(path): \(error)")
        } catch {
            await top.close()
            throw error
        }
        await top.close()
    }

    /// Which layer of `chain` is the base: the backing file, or the one `name` names (by the name
    /// the chain recorded, or as a path relative to the working directory or the image's).
    static func baseDepth(of chain: ImageSession, named name: String?, path: String) throws -> Int {
        guard let name else {
            guard chain.layers.count > 1 else { throw ImageToolError("Image does not have a backing file") }
            return 1
        }
        let wanted = canonical(name)
        let relative = canonical(directory(of: path) + name)
        for depth in 1..<chain.layers.count {
            let layer = chain.layers[depth]
            let recorded = chain.layers[depth - 1].probe.backingFileName
            if recorded == name || layer.filename == name { return depth }
            let resolved = canonical(layer.filename)
            if resolved != nil && (resolved == wanted || resolved == relative) { return depth }
        }
        throw ImageToolError("Did not find '\(name)' in the backing chain of '\(path)'")
    }

    /// Copies every range some layer above `baseDepth` holds, as the chain reads it.
    private func copy(from chain: ImageSession, above baseDepth: Int, into target: ImageSession) async throws {
        let size = chain.sizeBytes
        let buffer = AlignedBuffer(count: Int(Self.chunkBytes))
        var offset: UInt64 = 0
        progress?(0)
        while offset < size {
            let extent = try await chain.blockStatus(offsetBytes: offset, maxLengthBytes: min(Self.chunkBytes, size - offset))
            guard extent.lengthBytes > 0 else { throw ImageToolError("Unexpected end of the image at offset \(offset)") }
            let length = Int(extent.lengthBytes)
            if extent.isAllocated, (extent.depth ?? 0) < baseDepth {
                if extent.isZero && !extent.isData {
                    try await submit(target, BlockRequest(operation: .writeZeroes, offsetBytes: offset, lengthBytes: length))
                } else {
                    let slice = buffer.slice(from: 0, count: length)
                    let read = await chain.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length, buffer: slice))
                    guard read.isOK else { throw ImageToolError("error while reading at byte \(offset): \(read)") }
                    try await submit(target, BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: length, buffer: slice))
                }
            }
            offset += extent.lengthBytes
            progress?(Double(offset) / Double(size))
        }
        let flushed = await target.flush()
        guard flushed.isOK else { throw ImageToolError("Could not flush the base image: \(flushed)") }
    }

    private func submit(_ target: ImageSession, _ request: BlockRequest) async throws {
        let status = await target.submit(request)
        guard status.isOK else { throw ImageToolError("error while writing at byte \(request.offsetBytes): \(status)") }
    }

    /// Opens an image for a tool, failing in qemu-img's words.
    static func open(_ path: String, _ options: ImageOpenOptions) async throws -> ImageSession {
        do {
            return try await ImageSession.open(path, options: options)
        } catch {
            throw ImageToolError("Could not open '\(path)': \(error)")
        }
    }

    private static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[...slash])
    }

    private static func canonical(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
