import Foundation
import Testing

/// The folder tree is the architecture diagram: each target's sources may import only targets of
/// a lower layer (Runtime <- Graph <- Nodes/Filters/Devices <- Engine <- CLI). Read from the
/// sources' import lines, so a lower layer that starts to import a higher one fails here, whatever
/// Package.swift declares. (scripts/test also builds with the explicit dependency import check, so
/// a target cannot import what it does not declare.)
@Suite struct LayeringTests {
    /// Target, its folder under the repository root, and its layer (lowest first).
    static let layers: [(module: String, folder: String, layer: Int)] = [
        ("CStrataShim", "Sources/Shims/CStrataShim", 0),
        ("CZlib", "Sources/Shims/CZlib", 0),
        ("CZstd", "Sources/Shims/CZstd", 0),
        ("CRbd", "Sources/Shims/CRbd", 0),
        ("CIscsi", "Sources/Shims/CIscsi", 0),
        ("StrataRuntime", "Sources/Runtime", 1),
        ("StrataFormatting", "Sources/Formatting", 1),
        ("StrataNBD", "Sources/NBD/Codec", 1),
        ("StrataVhostUser", "Sources/VhostUser/Protocol", 1),
        ("StrataGraph", "Sources/Graph", 2),
        ("StrataNodes", "Sources/Nodes", 3),
        ("StrataNBDClient", "Sources/NBD/Client", 3),
        ("StrataFilters", "Sources/Filters", 3),
        ("StrataRBD", "Sources/Remote/RBD", 3),
        ("StrataISCSI", "Sources/Remote/iSCSI", 3),
        ("StrataDevices", "Sources/Devices", 3),
        ("StrataNBDServer", "Sources/NBD/Server", 3),
        ("StrataLoad", "Sources/Load", 4),
        ("StrataVhostUserServer", "Sources/VhostUser/Server", 4),
        ("StrataEngine", "Sources/Engine", 5),
        ("StrataImageTools", "Sources/ImageTools", 6),
        ("StrataJobs", "Sources/Jobs", 7),
        ("StrataSimulation", "Sources/Simulation", 7),
        ("StrataLab", "Sources/Lab", 7),
        ("StrataControl", "Sources/Control", 8),
        ("StrataCLI", "Sources/StrataCLI", 9),
        ("strata-alloc-count", "Bench/AllocationCount", 9),
        ("strata-ring-floor", "Bench/RingFloor", 9),
        ("strata-fuzz", "Sources/Fuzz", 9),
    ]

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Modules a source file imports, from its `import` lines.
    static func imports(ofSwiftFilesUnder folder: String) throws -> [(file: String, module: String)] {
        let base = root.appendingPathComponent(folder)
        guard let walker = FileManager.default.enumerator(atPath: base.path) else { return [] }
        var found: [(String, String)] = []
        for case let relative as String in walker where relative.hasSuffix(".swift") || relative.hasSuffix(".h") || relative.hasSuffix(".c") {
            let text = try String(contentsOf: base.appendingPathComponent(relative), encoding: .utf8)
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ")
                if let index = words.firstIndex(of: "import"), index <= 1, index + 1 < words.count,
                   index == 0 || words[0] == "@testable" || words[0] == "@_exported" {
                    found.append(("\(folder)/\(relative)", String(words[index + 1])))
                }
            }
        }
        return found
    }

    @Test func everySourceFolderHasALayer() throws {
        let folders = Set(Self.layers.map(\.folder))
        // Every folder that holds sources directly belongs to exactly one target of the table.
        let sources = Self.root.appendingPathComponent("Sources")
        let walker = try #require(FileManager.default.enumerator(atPath: sources.path))
        for case let relative as String in walker where relative.hasSuffix(".swift") || relative.hasSuffix(".c") || relative.hasSuffix(".modulemap") {
            let path = "Sources/" + relative
            #expect(folders.contains { path.hasPrefix($0 + "/") }, "\(path) lies in no target of the layer table")
        }
    }

    @Test func noTargetImportsAHigherOrEqualLayer() throws {
        let layerOf = Dictionary(uniqueKeysWithValues: Self.layers.map { ($0.module, $0.layer) })
        var checked = 0
        for target in Self.layers {
            for (file, module) in try Self.imports(ofSwiftFilesUnder: target.folder) {
                guard let imported = layerOf[module] else { continue }  // the toolchain's and packages' modules
                checked += 1
                #expect(imported < target.layer, "\(file): \(target.module) (layer \(target.layer)) imports \(module) (layer \(imported))")
            }
        }
        #expect(checked > 100, "the import scan found only \(checked) imports of Strata modules")
    }

    /// The modules each target declares in Package.swift, read from its text: `strata("Name",
    /// "Path", [deps])` for library targets and the `name:`/`dependencies:` of the others. Product
    /// dependencies are named by their product (`deque` is DequeModule, `histogram` is Histogram).
    static func declaredDependencies() throws -> [String: Set<String>] {
        let text = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        let aliases = ["deque": "DequeModule", "histogram": "Histogram"]
        func modules(_ list: Substring) -> Set<String> {
            var found: Set<String> = []
            for word in list.split(whereSeparator: { ",[]\n ".contains($0) }) {
                let trimmed = word.trimmingCharacters(in: .whitespaces)
                if trimmed.hasPrefix("\""), trimmed.hasSuffix("\""), trimmed.count > 2 { found.insert(String(trimmed.dropFirst().dropLast())) }
                if let alias = aliases[trimmed] { found.insert(alias) }
            }
            if let product = list.range(of: "product(name: \"") {
                var rest = list[product.upperBound...]
                while let end = rest.firstIndex(of: "\"") {
                    found.insert(String(rest[..<end]))
                    guard let next = rest.range(of: "product(name: \"") else { break }
                    rest = rest[next.upperBound...]
                }
            }
            return found
        }
        var declared: [String: Set<String>] = [:]
        var rest = Substring(text)
        while let call = rest.range(of: "strata(\"") {
            let nameEnd = rest[call.upperBound...].firstIndex(of: "\"")!
            let name = String(rest[call.upperBound..<nameEnd])
            let open = rest[nameEnd...].firstIndex(of: "[")!
            let close = rest[open...].firstIndex(of: "]")!
            declared[name] = modules(rest[rest.index(after: open)..<close])
            rest = rest[close...]
        }
        rest = Substring(text)
        while let call = rest.range(of: "name: \"") {
            let nameEnd = rest[call.upperBound...].firstIndex(of: "\"")!
            let name = String(rest[call.upperBound..<nameEnd])
            rest = rest[nameEnd...]
            guard let dependencies = rest.range(of: "dependencies: ["), let path = rest.range(of: "path: "),
                  dependencies.lowerBound < path.lowerBound else { continue }
            var depth = 1
            var index = dependencies.upperBound
            while depth > 0 {
                if rest[index] == "[" { depth += 1 } else if rest[index] == "]" { depth -= 1 }
                index = rest.index(after: index)
            }
            declared[name] = modules(rest[dependencies.upperBound..<index])
        }
        return declared
    }

    /// A target that imports a module it does not declare builds only by luck (SwiftPM puts every
    /// transitive dependency on the search path): every import is declared, and so is nothing unused.
    @Test func everyImportIsDeclaredAndEveryDeclarationImported() throws {
        let declared = try Self.declaredDependencies()
        let known = Set(Self.layers.map(\.module)).union(["DequeModule", "Histogram", "ArgumentParser", "MallocInterposerSwift"])
        for target in Self.layers where target.layer > 0 {
            let dependencies = try #require(declared[target.module], "Package.swift declares no target \(target.module)")
            let imported = Set(try Self.imports(ofSwiftFilesUnder: target.folder).map(\.module)).intersection(known)
            for module in imported.subtracting(dependencies).sorted() {
                Issue.record("\(target.module) imports \(module) without declaring it in Package.swift")
            }
            for module in dependencies.subtracting(imported).sorted() {
                Issue.record("\(target.module) declares \(module) in Package.swift but no source imports it")
            }
        }
    }

    /// Only the C shims hold C, and only the targets that issue ring operations, pass descriptors
    /// over sockets or read shared memory with C atomics import them; the graph contracts and
    /// formats stay Swift.
    @Test func cStaysInTheShims() throws {
        let mayImportShim: Set<String> = [
            "StrataRuntime", "StrataNodes", "StrataNBDClient", "StrataNBDServer", "StrataDevices", "StrataVhostUserServer", "StrataLoad",
            "StrataCLI", "strata-ring-floor",
        ]
        for target in Self.layers where target.layer > 0 {
            let base = Self.root.appendingPathComponent(target.folder)
            let walker = try #require(FileManager.default.enumerator(atPath: base.path))
            for case let relative as String in walker {
                #expect(!(relative.hasSuffix(".c") || relative.hasSuffix(".h")), "\(target.folder)/\(relative): C outside Sources/Shims")
            }
            for (file, module) in try Self.imports(ofSwiftFilesUnder: target.folder) where module.hasPrefix("C") && layerOfShim(module) {
                #expect(mayImportShim.contains(target.module), "\(file): \(target.module) imports \(module)")
            }
        }
    }

    private func layerOfShim(_ module: String) -> Bool { ["CStrataShim", "CZlib", "CZstd"].contains(module) }
}
