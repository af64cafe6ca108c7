import Glibc
import StrataEngine
import StrataGraph
import StrataImageTools
import StrataRuntime

/// The command interpreter of `strata io`, qemu-io's commands with its flags, output and
/// failure rules: a failing command prints why and makes the exit status 1, but later commands
/// still run (qemu-io 7.2); `quit` stops. Runs on the command's own task; aio commands run in
/// tasks of their own and report when they complete.
final class IoInterpreter {
    /// qemu's BDRV_REQUEST_MAX_BYTES.
    static let maxRequestBytes: Int64 = 2_147_483_136

    struct Command: Sendable {
        let name: String
        let alias: String?
        let minArguments: Int
        /// -1: no upper bound.
        let maxArguments: Int
        /// Needs a writable image (qemu-io asks for BLK_PERM_WRITE first).
        let writes: Bool
        let usage: String
        let summary: String
        let run: @Sendable (IoInterpreter, [String]) async -> Bool
    }

    let session: ImageSession
    private(set) var quitRequested = false
    var pendingAio: [Task<Void, Never>] = []

    init(session: ImageSession) {
        self.session = session
    }

    /// Runs one command line; false when it failed.
    func execute(_ line: String) async -> Bool {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let name = words.first else { return true }
        guard let command = Self.commands.first(where: { $0.name == name || $0.alias == name }) else {
            error("command \"\(name)\" not found")
            return false
        }
        let count = words.count - 1
        if count < command.minArguments || (command.maxArguments >= 0 && count > command.maxArguments) {
            if command.maxArguments < 0 {
                error("bad argument count \(count) to \(name), expected at least \(command.minArguments) arguments")
            } else if command.minArguments == command.maxArguments {
                error("bad argument count \(count) to \(name), expected \(command.minArguments) arguments")
            } else {
                error("bad argument count \(count) to \(name), expected between \(command.minArguments) and \(command.maxArguments) arguments")
            }
            return false
        }
        if command.writes && session.isReadOnly {
            error("strata io: Block node is read-only")
            return false
        }
        return await command.run(self, Array(words.dropFirst()))
    }

    /// Waits for every aio request still in flight (aio_flush, and before the image closes).
    func drainAio() async {
        let pending = pendingAio
        pendingAio.removeAll()
        for task in pending { await task.value }
    }

    func requestQuit() { quitRequested = true }

    // MARK: Output

    func out(_ text: String) { print(text) }

    func error(_ text: String) {
        StandardError.print(text)
    }

    func usage(_ name: String) -> Bool {
        if let command = Self.commands.first(where: { $0.name == name }) { out("\(command.name) \(command.usage) -- \(command.summary)") }
        return false
    }

    // MARK: Argument helpers

    /// getopt with qemu-io's reaction to a bad option: the message, then the usage line.
    func options(_ arguments: [String], spec: String, command: String) -> IoOptions? {
        do {
            return try IoOptions.parse(arguments, spec: spec)
        } catch {
            self.error(error.message(command: command))
            _ = usage(command)
            return nil
        }
    }

    func number(_ text: String) -> Int64? {
        do {
            return try IoFormat.number(text)
        } catch {
            out(error.message)
            return nil
        }
    }

    func length(_ text: String) -> Int64? {
        guard let value = number(text) else { return nil }
        guard value <= Self.maxRequestBytes else {
            out("length cannot exceed \(Self.maxRequestBytes), given \(text)")
            return nil
        }
        return value
    }

    func pattern(_ options: IoOptions, default byte: UInt8) -> UInt8?? {
        guard let text = options.values["P"] else { return .some(nil) }
        guard let value = IoFormat.patternByte(text) else {
            out("\(text) is not a valid pattern byte")
            return nil
        }
        return .some(value)
    }

    /// Runs one request and measures it.
    func timed(_ request: BlockRequest) async -> (IOStatus, Double) {
        let start = MonotonicClock.now()
        let status = await session.submit(request)
        return (status, Double(MonotonicClock.now() - start) / 1e9)
    }

    static func describe(_ status: IOStatus) -> String { String(cString: strerror(status.errno)) }
}
