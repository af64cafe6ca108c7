import StrataGraph
import StrataNodes

/// QEMU's backing chain by name: a qcow2 node added without a `backing` option opens the backing
/// file its image names (relative to the image's directory, format from the header's backing
/// format or probed), read-only, and that image's backing in turn. The chain is written as inline
/// children of the node's options, so the graph names them `#blockN` as QEMU names implicit nodes.
/// `"backing": null` opens none, and a node whose file is not a plain file is left as it is.
public enum ImplicitBackingChain {
    /// Chains deeper than this are refused (QEMU stops at 1000; a real chain is a few layers).
    public static let maxDepth = 64

    /// `options` with `backing` filled in when the node is a qcow2 image naming a backing file.
    /// `fileOptions` finds the options of a node named as a child (`file: "name"`).
    public static func expand(_ options: [String: JSONValue], fileOptions: (String) -> [String: JSONValue]?) throws -> [String: JSONValue] {
        guard options["driver"] == .string("qcow2"), options["backing"] == nil,
              let path = filename(of: options["file"], fileOptions: fileOptions) else { return options }
        var expanded = options
        var seen: Set<String> = [ImageProbe.canonicalPath(path)]
        if let chain = try backingOptions(of: path, depth: 1, seen: &seen) { expanded["backing"] = .object(chain) }
        return expanded
    }

    /// The inline options of the backing node of the image at `path`, nil when it names none.
    private static func backingOptions(of path: String, depth: Int, seen: inout Set<String>) throws -> [String: JSONValue]? {
        let probe = try ImageProbe.probe(path: path)
        guard probe.format == .qcow2, let name = probe.backingFileName else { return nil }
        guard depth <= maxDepth else { throw GraphError.badEdit("Backing chain of '\(path)' is deeper than \(maxDepth) images") }
        let backingPath = ImageProbe.backingPath(name, of: path)
        guard seen.insert(ImageProbe.canonicalPath(backingPath)).inserted else {
            throw GraphError.badEdit("Backing file '\(backingPath)' refers to itself through its chain")
        }
        let format = try probe.backingFormat ?? ImageProbe.probe(path: backingPath).format.rawValue
        var node: [String: JSONValue] = [
            "driver": .string(format), "read-only": .bool(true),
            "file": .object(["driver": "file", "filename": .string(backingPath), "read-only": .bool(true)]),
        ]
        if format == "qcow2" {
            node["backing"] = try backingOptions(of: backingPath, depth: depth + 1, seen: &seen).map { .object($0) } ?? .null
        }
        return node
    }

    private static func filename(of file: JSONValue?, fileOptions: (String) -> [String: JSONValue]?) -> String? {
        let options: [String: JSONValue]?
        switch file {
        case .string(let name)?: options = fileOptions(name)
        case .object(let inline)?: options = inline
        default: options = nil
        }
        guard let options, options["driver"] == .string("file"), case .string(let path)? = options["filename"] else { return nil }
        return path
    }
}
