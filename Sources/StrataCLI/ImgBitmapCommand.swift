import ArgumentParser
import StrataControl
import StrataEngine
import StrataGraph
import StrataImageTools

/// `strata img bitmap`: qemu-img bitmap. The operations run in the order given, each as the QMP
/// command a daemon would run (block-dirty-bitmap-add, -remove, -clear, -enable, -disable,
/// -merge), in-process on the image opened as a daemon opens it; closing the image stores the
/// persistent bitmaps. Errors read as qemu-img's: "Operation add on bitmap b0 failed: ...".
struct ImgBitmapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bitmap",
        abstract: "Add, remove, clear, enable, disable or merge persistent bitmaps (as qemu-img bitmap).",
        discussion: "strata img bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... "
            + "[-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT] FILENAME BITMAP")

    @Argument(parsing: .captureForPassthrough, help: "Operations, options, FILENAME and BITMAP, as qemu-img bitmap takes them.")
    var words: [String] = []

    enum Operation: Equatable {
        case add, remove, clear, enable, disable
        case merge(String)

        var name: String {
            switch self {
            case .add: "add"
            case .remove: "remove"
            case .clear: "clear"
            case .enable: "enable"
            case .disable: "disable"
            case .merge: "merge"
            }
        }
    }

    struct Parsed {
        var operations: [Operation] = []
        var format: String?
        var sourceFile: String?
        var sourceFormat: String?
        var granularity: Int64?
        var positional: [String] = []
    }

    static func parse(_ words: [String]) throws -> Parsed {
        var parsed = Parsed()
        var index = 0
        func value(_ option: String) throws -> String {
            index += 1
            guard index < words.count else { throw ValidationError("option '\(option)' needs a value") }
            return words[index]
        }
        while index < words.count {
            let word = words[index]
            switch word {
            case "--add": parsed.operations.append(.add)
            case "--remove": parsed.operations.append(.remove)
            case "--clear": parsed.operations.append(.clear)
            case "--enable": parsed.operations.append(.enable)
            case "--disable": parsed.operations.append(.disable)
            case "--merge": parsed.operations.append(.merge(try value(word)))
            case "-f": parsed.format = try value(word)
            case "-b": parsed.sourceFile = try value(word)
            case "-F": parsed.sourceFormat = try value(word)
            case "-g":
                let text = try value(word)
                guard let size = OptionReader.parseSize(text) else { throw ValidationError("Invalid granularity specified") }
                parsed.granularity = size
            default:
                guard !word.hasPrefix("-") || word == "-" else { throw ValidationError("unknown option '\(word)'") }
                parsed.positional.append(word)
            }
            index += 1
        }
        guard !parsed.operations.isEmpty else {
            throw ValidationError("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
        }
        guard parsed.positional.count == 2 else { throw ValidationError("Expecting filename and bitmap name") }
        if parsed.granularity != nil && !parsed.operations.contains(.add) { throw ValidationError("granularity only supported with --add") }
        if parsed.sourceFile != nil && !parsed.operations.contains(where: { if case .merge = $0 { true } else { false } }) {
            throw ValidationError("-b requires --merge")
        }
        if parsed.sourceFormat != nil && parsed.sourceFile == nil { throw ValidationError("-F requires -b") }
        return parsed
    }

    func run() async throws {
        let parsed: Parsed
        do { parsed = try Self.parse(words) } catch { throw ImgCommand.fail("\(error)") }
        let (file, bitmap) = (parsed.positional[0], parsed.positional[1])
        let daemon: StorageDaemon
        let monitor: QMPMonitor
        let node: String
        do {
            let (actions, top) = try ImageSession.blockdevActions(for: file, options: ImageOpenOptions(format: parsed.format, readOnly: false))
            node = top
            daemon = try StorageDaemon(plan: .init(queueCount: 1, blockdevActions: actions,
                                                   nbdListeners: [], nbdExports: []), log: { _ in })
            _ = try await daemon.start()
            monitor = QMPMonitor(daemon: daemon) {}
        } catch {
            throw ImgCommand.fail("Could not open '\(file)': \(error)")
        }
        var failure: String?
        do {
            var sourceNode = node
            if let sourceFile = parsed.sourceFile {
                sourceNode = "bitmap-source"
                var format = parsed.sourceFormat
                if format == nil { format = try await ImageInfoProbe.format(sourceFile) }
                _ = try await monitor.run("blockdev-add", arguments: [
                    "driver": .string(format ?? "raw"), "node-name": .string(sourceNode), "read-only": true,
                    "file": ["driver": "file", "filename": .string(sourceFile), "read-only": true],
                ].merging(format == "qcow2" ? ["backing": .null] : [:]) { first, _ in first })
            }
            for operation in parsed.operations {
                var arguments: [String: JSONValue] = ["node": .string(node), "name": .string(bitmap)]
                let command: String
                switch operation {
                case .add:
                    command = "block-dirty-bitmap-add"
                    arguments["persistent"] = true
                    if let granularity = parsed.granularity { arguments["granularity"] = .int(granularity) }
                case .remove: command = "block-dirty-bitmap-remove"
                case .clear: command = "block-dirty-bitmap-clear"
                case .enable: command = "block-dirty-bitmap-enable"
                case .disable: command = "block-dirty-bitmap-disable"
                case .merge(let source):
                    command = "block-dirty-bitmap-merge"
                    arguments = ["node": .string(node), "target": .string(bitmap),
                                 "bitmaps": [["node": .string(sourceNode), "name": .string(source)]]]
                }
                do {
                    _ = try await monitor.run(command, arguments: arguments)
                } catch {
                    failure = "Operation \(operation.name) on bitmap \(bitmap) failed: \(error.desc)"
                    break
                }
            }
        } catch {
            failure = "\(error)"
        }
        await monitor.shutdown()
        await daemon.shutdown()
        if let failure { throw ImgCommand.fail(failure) }
    }
}
