import ArgumentParser
import Glibc
import StrataControl
import StrataFormatting
import StrataGraph

/// `strata qmp SOCKET COMMAND [key=value ... | JSON]`: one QMP command from a script, as
/// qmp-shell sends one. Prints the reply's `return` as JSON; an error reply prints its class and
/// text on standard error and exits 1.
struct QMPCommandLine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp",
        abstract: "Send one QMP command to a monitor socket and print the reply (as qmp-shell).",
        discussion: """
        Arguments are key=value pairs (dotted keys nest; numbers, true/false and null are typed)
        or one JSON object:
          strata qmp /tmp/qmp.sock query-named-block-nodes
          strata qmp /tmp/qmp.sock blockdev-add driver=null-co node-name=n0 size=1073741824
          strata qmp /tmp/qmp.sock blockdev-add '{"driver":"null-co","node-name":"n0"}'
          strata qmp /tmp/qmp.sock block-export-del id=e0 --wait-event BLOCK_EXPORT_DELETED
        """
    )

    @Argument(help: "The monitor: a Unix socket path (or unix:PATH) or HOST:PORT.")
    var socket: String
    @Argument(help: "The command, e.g. query-version.")
    var command: String
    @Argument(help: "key=value pairs, or one JSON object.")
    var arguments: [String] = []
    @Option(name: .customLong("wait-event"), help: "After the reply, wait for this event and print it.")
    var waitEvent: String?
    @Option(help: "Seconds to wait for --wait-event (default 30).")
    var timeout: Double = 30
    @Flag(help: "Print replies indented.")
    var pretty = false

    func run() throws {
        let parsed = try Self.parseArguments(arguments)
        let client: QMPClient
        do { client = try QMPClient(address: socket) } catch {
            StandardError.print("strata qmp: \(error)")
            throw ExitCode(2)
        }
        let reply = try client.execute(command, arguments: parsed)
        if let error = reply.error {
            StandardError.print("strata qmp: \(error.errorClass): \(error.desc)")
            throw ExitCode(1)
        }
        print(render(reply.result ?? .object([:])))
        if let waitEvent {
            guard let event = try client.waitForEvent(waitEvent, timeoutSeconds: timeout) else {
                StandardError.print("strata qmp: no \(waitEvent) event within \(timeout) s")
                throw ExitCode(1)
            }
            print(render(.object(event)))
        }
    }

    private func render(_ value: JSONValue) -> String {
        pretty ? QMPText.ordered(value).text() : QMPText.ordered(value).compactText()
    }

    /// key=value pairs typed as QMP expects them, or one JSON object.
    static func parseArguments(_ items: [String]) throws -> [String: JSONValue] {
        if items.count == 1, items[0].hasPrefix("{") {
            guard case .object(let fields) = try JSONValue.parse(items[0]) else { throw ValidationError("arguments: expected a JSON object") }
            return fields
        }
        var root: [String: JSONValue] = [:]
        for item in items {
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else { throw ValidationError("'\(item)' is not key=value") }
            let path = item[..<equals].split(separator: ".").map(String.init)
            try insert(typed(String(item[item.index(after: equals)...])), at: path[...], into: &root, key: item)
        }
        return root
    }

    private static func typed(_ text: String) -> JSONValue {
        if let number = Int64(text) { return .int(number) }
        switch text {
        case "true": return .bool(true)
        case "false": return .bool(false)
        case "null": return .null
        default: return .string(text)
        }
    }

    private static func insert(_ value: JSONValue, at path: ArraySlice<String>, into object: inout [String: JSONValue], key: String) throws {
        guard let head = path.first else { throw ValidationError("'\(key)': empty key") }
        if path.count == 1 {
            guard object[head] == nil else { throw ValidationError("'\(key)' given twice") }
            object[head] = value
            return
        }
        var nested: [String: JSONValue] = [:]
        if let existing = object[head] {
            guard case .object(let fields) = existing else { throw ValidationError("'\(key)' conflicts with another key") }
            nested = fields
        }
        try insert(value, at: path.dropFirst(), into: &nested, key: key)
        object[head] = .object(nested)
    }
}
