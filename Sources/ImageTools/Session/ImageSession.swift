import Glibc
import StrataEngine
import StrataGraph
import StrataNodes
import StrataRuntime

/// An image opened the way qemu-img and qemu-io open one: the format probed (qcow2 by its magic,
/// else raw) unless given, the backing chain a qcow2 image names opened read-only by name relative
/// to the image's directory, cache and locking from the options. The graph is built with
/// blockdev-add transactions on an engine of its own; requests go in through a port attached to
/// each queue, so they take the same path a device's requests take.
public final class ImageSession: Sendable {
    public static let backendName = "image"
    /// QEMU puts no limit on a chain's length but a loop; this bounds the probing.
    public static let maxChainDepth = 64

    public let path: String
    /// Layer 0 is the image itself, then its backing images in order.
    public let layers: [ImageLayer]
    /// True when opened read-only, asked for or forced (a format node that cannot write yet).
    public let isReadOnly: Bool
    public let engine: Engine
    private let ports: [BackendPort]
    private let formatStates: [any NodeState]
    private let fileStates: [any NodeState]
    private let closed = Locked(false)
    /// The blkdebug node of a `blkdebug:CONFIG:FILENAME` image, for qemu-io's breakpoint commands.
    public let breakpoints: (any DebugBreakpoints)?

    private init(path: String, layers: [ImageLayer], isReadOnly: Bool, engine: Engine, ports: [BackendPort],
                 formatStates: [any NodeState], fileStates: [any NodeState], breakpoints: (any DebugBreakpoints)?) {
        self.breakpoints = breakpoints
        self.path = path
        self.layers = layers
        self.isReadOnly = isReadOnly
        self.engine = engine
        self.ports = ports
        self.formatStates = formatStates
        self.fileStates = fileStates
    }

    /// Opens `path`; on failure nothing stays open.
    public static func open(_ path: String, options: ImageOpenOptions = ImageOpenOptions()) async throws -> ImageSession {
        guard ImageOpenOptions.cacheModes.contains(options.cacheMode) || options.cacheMode == "off" else {
            throw ImageSessionError.badCacheMode(options.cacheMode)
        }
        // QEMU's blkverify:RAW:TEST: the TEST image (format probed, chain and all) checked read
        // by read against RAW, a raw reference image.
        var imagePath = path
        var verifyAgainst: String?
        if path.hasPrefix("blkverify:") {
            let rest = path.dropFirst("blkverify:".count)
            guard let colon = rest.firstIndex(of: ":"), colon != rest.startIndex, rest.index(after: colon) != rest.endIndex else {
                throw ImageSessionError.badBlkverifyFilename(path)
            }
            verifyAgainst = String(rest[..<colon])
            imagePath = String(rest[rest.index(after: colon)...])
        }
        let layers = try chain(of: imagePath, options: options)
        let engine = try Engine(queueCount: max(1, options.queueCount), cpus: nil)
        do {
            let readOnly = options.readOnly
            var actions = graph(layers, options: options, readOnly: readOnly)
            if let reference = verifyAgainst { actions = verified(actions, against: reference, test: layers[0].nodeName, options: options) }
            try await engine.controller.apply(json: actions)
            if options.copyOnRead {
                // qemu-io -C: a copy-on-read filter between the guest and the top image.
                try await engine.controller.apply(json: .object([
                    "type": "insert-filter",
                    "data": .object(["above": .string(layers[0].nodeName),
                                     "filter": .object(["driver": "copy-on-read", "node-name": "copy-on-read0"])]),
                ]))
            }
            var ports: [BackendPort] = []
            for queue in engine.queues {
                let port = BackendPort(backendName: backendName, queue: queue)
                try await engine.controller.attach(port)
                ports.append(port)
            }
            var formatStates: [any NodeState] = []
            var fileStates: [any NodeState] = []
            for layer in layers {
                formatStates.append(try await engine.controller.state(of: layer.nodeName))
                fileStates.append(try await engine.controller.state(of: layer.fileNodeName))
            }
            let breakpoints = layers[0].blkdebugConfig == nil ? nil
                : try await engine.controller.state(of: layers[0].formatChildName) as? any DebugBreakpoints
            return ImageSession(path: path, layers: layers, isReadOnly: readOnly, engine: engine, ports: ports,
                                formatStates: formatStates, fileStates: fileStates, breakpoints: breakpoints)
        } catch {
            await engine.shutdown()
            throw error
        }
    }

    /// Queues (executors) requests can be sent to.
    public var queueCount: Int { engine.queues.count }

    /// The image's format, as probed or given.
    public var format: String { layers[0].format }

    /// The image's virtual size now.
    public var sizeBytes: UInt64 { formatStates[0].sizeBytes }

    /// The top layer's cluster size, for formats that have clusters (qcow2).
    public var clusterSizeBytes: Int? { (formatStates[0] as? Qcow2NodeState)?.clusterSize }

    /// The shared state of layer `depth`'s format node (qcow2 details for `info`).
    public func formatState(depth: Int = 0) -> any NodeState { formatStates[depth] }

    /// The shared state of layer `depth`'s file node.
    public func fileState(depth: Int = 0) -> any NodeState { fileStates[depth] }

    /// The executor preference a long-lived task sending requests to `queue` should carry
    /// (nil where the thread-affine executors keep continuations on the queue anyway).
    public func taskPreference(queue: Int = 0) -> QueueExecutor? {
        ThreadAffineExecutors.preference(for: engine.queues[queue].executor)
    }

    /// Serves one request on `queue`. The request's buffer must stay valid until this returns;
    /// O_DIRECT (cache none, directsync) wants it 4096-byte aligned, else it goes through a bounce.
    public func submit(_ request: BlockRequest, queue: Int = 0) async -> IOStatus {
        // QEMU's BlockBackend check (blk_check_byte_request): nothing past the end reaches a node.
        if request.operation != .flush {
            guard request.lengthBytes >= 0, let end = request.endBytes, end <= sizeBytes else { return .ioError }
        }
        let port = ports[queue]
        let executor = engine.queues[queue].executor
        // A task without the queue as preference would see every ring completion resumed on the
        // global executor first; one task per request is fine for the tools' one-shot requests.
        if let preference = ThreadAffineExecutors.preference(for: executor), QueueExecutor.current !== executor {
            return await Task(executorPreference: preference) { await port.submit(request) }.value
        }
        return await port.submit(request)
    }

    /// Flushes the whole chain's writable nodes (only the top image is writable).
    public func flush() async -> IOStatus {
        await submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
    }

    /// What the image holds from `offsetBytes`, following the backing chain as qemu-img map does:
    /// the first layer that answers for the range itself gives the extent, with its depth; a
    /// range no layer answers for reads as zeros (depth: the bottom layer it reached).
    public func blockStatus(offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        try await formatStates[0].chainBlockStatus(offsetBytes: offsetBytes, maxLengthBytes: maxLengthBytes)
    }

    /// Whether layer `depth` itself answers for the range from `offsetBytes` (qemu-io's alloc and
    /// map: bdrv_is_allocated on one layer), and for how long.
    public func layerBlockStatus(depth: Int = 0, offsetBytes: UInt64, maxLengthBytes: UInt64) async throws -> BlockStatusExtent {
        let state = formatStates[depth]
        guard offsetBytes < state.sizeBytes, maxLengthBytes > 0 else {
            return BlockStatusExtent(lengthBytes: 0, isData: false, isZero: true, isAllocated: false, depth: depth)
        }
        var extent = try await state.blockStatusOrData(offsetBytes: offsetBytes, maxLengthBytes: maxLengthBytes)
        extent.depth = depth
        return extent
    }

    /// Changes the image's size, where its format allows it (raw over a file, no window).
    public func resize(to newSizeBytes: UInt64) async throws {
        guard format == "raw", let file = fileStates[0] as? FileNodeState else {
            throw ImageSessionError.notSupported("Image format '\(format)' does not support resizing")
        }
        try await file.resize(to: newSizeBytes)
    }

    /// Flushes, detaches and shuts the engine down; returns the flush's status. Later calls do nothing.
    @discardableResult
    public func close() async -> IOStatus {
        if closed.withLock({ (done: inout Bool) -> Bool in defer { done = true }; return done }) { return .ok }
        let status = isReadOnly ? .ok : await flush()
        for port in ports { await engine.controller.detach(port) }
        await engine.shutdown()
        return status
    }

    // MARK: Building the graph

    /// The blockdev-add actions that open `path` as the tools do (format probed, backing chain by
    /// name), without a backend: for a daemon that attaches its own front end. Returns the top
    /// node's name with them.
    public static func blockdevActions(for path: String, options: ImageOpenOptions) throws -> (actions: [JSONValue], topNodeName: String) {
        let layers = try chain(of: path, options: options)
        guard case .array(var actions) = graph(layers, options: options, readOnly: options.readOnly) else {
            preconditionFailure("graph(_:options:readOnly:) builds an array of actions")
        }
        actions.removeLast()  // the backend-add over the top node
        return (actions, layers[0].nodeName)
    }

    /// The chain from `path` down, formats resolved; backing names are relative to the directory
    /// of the image that names them (QEMU's bdrv_get_full_backing_filename).
    static func chain(of path: String, options: ImageOpenOptions) throws -> [ImageLayer] {
        var layers: [ImageLayer] = []
        var seen: Set<String> = []
        var filename = path
        var format = options.format
        var blkdebugConfig: String?
        if path.hasPrefix("blkdebug:") {
            guard let (config, image) = ImageLayer.splitBlkdebug(path) else { throw ImageSessionError.badBlkdebugFilename(path) }
            blkdebugConfig = config
            filename = image
        }
        if let remote = DriverCatalog.registry.protocolDriver(forFilename: path) {
            // An image reached through a protocol node (an NBD export). QEMU probes the format
            // through the connection; raw unless given is enough here, and no backing chain is followed.
            var reader = OptionReader(nodeName: "img0-file", options: ["filename": .string(path)])
            _ = try remote.parse(&reader)
            let resolved = format ?? "raw"
            guard resolved == "raw" || resolved == "qcow2" else { throw ImageSessionError.unknownFormat(resolved) }
            return [ImageLayer(filename: path, format: resolved, nodeName: "img0", fileNodeName: "img0-file", probe: ImageProbe(format: .raw))]
        }
        while true {
            let depth = layers.count
            guard depth < maxChainDepth else { throw ImageSessionError.backingChainTooDeep(path) }
            let probe = try ImageProbe.probe(path: filename)
            let resolved = format ?? probe.format.rawValue
            guard resolved == "raw" || resolved == "qcow2" else { throw ImageSessionError.unknownFormat(resolved) }
            guard seen.insert(ImageProbe.canonicalPath(filename)).inserted else { throw ImageSessionError.backingLoop(filename) }
            var layer = ImageLayer(filename: filename, format: resolved, nodeName: "img\(depth)", fileNodeName: "img\(depth)-file", probe: probe)
            if depth == 0 { layer.blkdebugConfig = blkdebugConfig }
            if resolved == "qcow2", probe.format == .qcow2 { layer.dataFilePath = try dataFilePath(of: filename) }
            layers.append(layer)
            guard options.openBackingChain, resolved == "qcow2", probe.format == .qcow2, let backing = probe.backingFileName else { break }
            filename = ImageProbe.backingPath(backing, of: filename)
            format = probe.backingFormat
        }
        return layers
    }

    /// The external data file a qcow2 image's header names (QEMU resolves it as it does a
    /// backing file name), or nil.
    static func dataFilePath(of path: String) throws -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return nil }
        // The header and its extensions lie in the first cluster (at most 2 MiB).
        var bytes = [UInt8](repeating: 0, count: Int(min(UInt64(info.st_size), 2 << 20)))
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        let header = try Qcow2Header(parsing: Array(bytes[0..<count]), fileSize: UInt64(info.st_size), node: path)
        guard header.incompatibleFeatures & Qcow2Header.externalDataFileBit != 0, let name = header.dataFileName else { return nil }
        return ImageProbe.backingPath(name, of: path)
    }

    /// blockdev-add actions for the chain, bottom first, and the backend over the top.
    static func graph(_ layers: [ImageLayer], options: ImageOpenOptions, readOnly: Bool) -> JSONValue {
        var actions: [JSONValue] = []
        for (depth, layer) in layers.enumerated().reversed() {
            // Backing images are only read, as QEMU opens them.
            let layerReadOnly = readOnly || depth > 0
            if let remote = DriverCatalog.registry.protocolDriver(forFilename: layer.filename) {
                // Cache mode and image locks belong to the server's side of a remote image.
                actions.append(add([
                    "driver": .string(remote.name), "node-name": .string(layer.fileNodeName), "filename": .string(layer.filename),
                    "read-only": .bool(layerReadOnly),
                ]))
            } else {
                actions.append(add([
                    "driver": "file", "node-name": .string(layer.fileNodeName), "filename": .string(layer.filename),
                    "cache": .string(options.cacheMode), "read-only": .bool(layerReadOnly),
                    "locking": .string(options.forceShare ? "off" : "auto"), "discard": options.unmap ? "unmap" : "ignore",
                ]))
            }
            if let config = layer.blkdebugConfig {
                var filter: [String: JSONValue] = [
                    "driver": "blkdebug", "node-name": .string(layer.formatChildName), "image": .string(layer.fileNodeName),
                ]
                if !config.isEmpty { filter["config"] = .string(config) }
                actions.append(add(filter))
            }
            var node: [String: JSONValue] = [
                "driver": .string(layer.format), "node-name": .string(layer.nodeName), "file": .string(layer.formatChildName),
                "read-only": .bool(layerReadOnly),
            ]
            if layer.format == "qcow2" {
                node["backing"] = depth + 1 < layers.count ? .string(layers[depth + 1].nodeName) : .null
            }
            if let dataFile = layer.dataFilePath {
                actions.append(add([
                    "driver": "file", "node-name": .string(layer.dataFileNodeName), "filename": .string(dataFile),
                    "cache": .string(options.cacheMode), "read-only": .bool(layerReadOnly),
                    "locking": .string(options.forceShare ? "off" : "auto"),
                ]))
                node["data-file"] = .string(layer.dataFileNodeName)
            }
            actions.append(add(node))
        }
        actions.append(.object(["type": "backend-add", "data": .object([
            "id": .string(backendName), "node-name": .string(layers[0].nodeName),
            "writable": .bool(!readOnly), "share-rw": .bool(options.forceShare),
        ])]))
        return .array(actions)
    }

    /// `actions` with a blkverify node between the backend and `test`, its `raw` child the file
    /// `reference` opened as raw.
    private static func verified(_ actions: JSONValue, against reference: String, test: String, options: ImageOpenOptions) -> JSONValue {
        guard case .array(var list) = actions, case .object(var backend)? = list.popLast(), case .object(var data)? = backend["data"] else {
            preconditionFailure("graph(_:options:readOnly:) ends with the backend-add")
        }
        list.append(add([
            "driver": "file", "node-name": "blkverify-raw-file", "filename": .string(reference), "cache": .string(options.cacheMode),
            "read-only": .bool(options.readOnly), "locking": .string(options.forceShare ? "off" : "auto"),
        ]))
        list.append(add(["driver": "raw", "node-name": "blkverify-raw", "file": "blkverify-raw-file", "read-only": .bool(options.readOnly)]))
        list.append(add(["driver": "blkverify", "node-name": "blkverify", "test": .string(test), "raw": "blkverify-raw"]))
        data["node-name"] = "blkverify"
        backend["data"] = .object(data)
        list.append(.object(backend))
        return .array(list)
    }

    private static func add(_ data: [String: JSONValue]) -> JSONValue {
        .object(["type": "blockdev-add", "data": .object(data)])
    }
}
