import Foundation
import StrataGraph

/// A blkdebug configuration file, QEMU's `-readconfig` format: `[inject-error]` and `[set-state]`
/// sections of `key = "value"` lines, `#` comments.
struct BlkdebugConfigFile {
    struct Section {
        let name: String
        let line: Int
        var options: [String: JSONValue] = [:]
    }

    let sections: [Section]

    init(path: String, nodeName: String) throws(GraphError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw GraphError.badOption(node: nodeName, option: "config", reason: "cannot read '\(path)': \(error.localizedDescription)")
        }
        try self.init(text: text, path: path, nodeName: nodeName)
    }

    init(text: String, path: String, nodeName: String) throws(GraphError) {
        var sections: [Section] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            let number = index + 1
            func fail(_ reason: String) -> GraphError {
                GraphError.badOption(node: nodeName, option: "config", reason: "\(path):\(number): \(reason)")
            }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw fail("a section header ends with ']'") }
                let name = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                guard name == "inject-error" || name == "set-state" else {
                    throw fail("unknown section '[\(name)]' (blkdebug reads [inject-error] and [set-state])")
                }
                sections.append(Section(name: name, line: number))
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { throw fail("expected key = \"value\", got '\(line)'") }
            guard !sections.isEmpty else { throw fail("'\(line)' comes before any section") }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            guard !key.isEmpty else { throw fail("a key is missing before '='") }
            guard sections[sections.count - 1].options[key] == nil else { throw fail("'\(key)' is given twice in one section") }
            sections[sections.count - 1].options[key] = .string(value)
        }
        self.sections = sections
    }
}
