import Glibc
import StrataGraph

/// The validated options of a sim node.
struct SimNodeConfiguration: NodeConfiguration {
    /// Past this the disk is full: writes there fail with ENOSPC, as on a small filesystem.
    static let defaultMaxSizeBytes: Int64 = 1 << 30

    /// Nil for an empty disk of `size` bytes.
    let filename: String?
    let emptySizeBytes: Int
    /// The scheduling lab's device model; nil keeps the turn-counted latency.
    let service: ServiceTimeModel.Parameters?
    let readOnly: Bool
    let seed: UInt64
    /// Latest a request completes, in turns of the queue executor (0: at once).
    let maxLatencyTurns: Int
    /// Faults per million requests once the simulation arms them.
    let faultPerMillion: UInt32
    let maxSizeBytes: Int
    /// `flush=ignore`: a disk that acknowledges flushes and keeps nothing, so the simulation can
    /// show that it notices lost writes (a lying disk, as some consumer drives are).
    let ignoresFlush: Bool

    var children: [ChildLink] { [] }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        filename = try reader.optionalString("filename")
        if filename?.isEmpty == true { throw reader.bad("filename", "must not be empty") }
        let size = try reader.optionalInteger("size", range: 0...(1 << 34))
        if filename == nil && size == nil { throw .missingOption(node: reader.nodeName, option: "filename") }
        if filename != nil && size != nil { throw reader.bad("size", "is for an empty disk and cannot be given with filename") }
        emptySizeBytes = Int(size ?? 0)
        service = ServiceTimeModel.Parameters.isGiven(in: reader) ? try ServiceTimeModel.Parameters(parsing: &reader) : nil
        readOnly = try reader.bool("read-only", default: false)
        seed = UInt64(bitPattern: try reader.integer("seed", default: 0, range: Int64.min...Int64.max))
        maxLatencyTurns = Int(try reader.integer("latency-max-turns", default: 8, range: 0...1024))
        faultPerMillion = UInt32(try reader.integer("fault-ppm", default: 0, range: 0...1_000_000))
        maxSizeBytes = Int(try reader.integer("max-size", default: Self.defaultMaxSizeBytes, range: 0...(1 << 40)))
        ignoresFlush = try reader.choice("flush", allowed: ["on", "ignore"], default: "on") == "ignore"
        try reader.finish()
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let filename else {
            if emptySizeBytes > maxSizeBytes { throw GraphError.badOption(node: name, option: "size", reason: "exceeds max-size \(maxSizeBytes)") }
            return SimNodeState(configuration: self, image: [UInt8](repeating: 0, count: emptySizeBytes))
        }
        return try SimNodeState(configuration: self, image: Self.load(filename, nodeName: name, maxSizeBytes: maxSizeBytes))
    }

    /// The image's bytes; a file larger than the disk may hold is refused rather than read.
    private static func load(_ path: String, nodeName: String, maxSizeBytes: Int) throws(GraphError) -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .openFailed(node: nodeName, reason: "Could not open '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, Int(info.st_size) <= maxSizeBytes else {
            throw .openFailed(node: nodeName, reason: "'\(path)' is larger than the sim disk's max-size \(maxSizeBytes)")
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            guard count > 0 else { throw .openFailed(node: nodeName, reason: "Could not read '\(path)': \(String(cString: strerror(errno)))") }
            done += count
        }
        return bytes
    }
}
