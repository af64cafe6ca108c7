import Foundation
import Glibc
import StrataGraph
import StrataRuntime
import Testing

/// What the node tests share: a control and a queue executor, a private temporary directory, and
/// helpers to open nodes through their descriptors and run requests on the queue's thread.
final class NodeTestHarness: Sendable {
    let control: QueueExecutor
    let queue: QueueExecutor
    let directory: String

    init(_ name: String) throws {
        control = try QueueExecutor(name: "\(name)-ctl")
        queue = try QueueExecutor(name: "\(name)-q0")
        let temporary = FileManager.default.temporaryDirectory.path
        var template = Array("\(temporary)/strata-\(name)-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SystemError("mkdtemp", errno: errno) }
        directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Stops both executors and removes the directory.
    func shutdown() {
        queue.shutdown()
        control.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func path(_ name: String) -> String { directory + "/" + name }

    /// A sparse file of `size` bytes.
    func createFile(_ name: String, size: Int) throws -> String {
        let file = path(name)
        let fd = Glibc.open(file, O_CREAT | O_RDWR | O_TRUNC, 0o644)
        guard fd >= 0 else { throw SystemError("create \(file)", errno: errno) }
        defer { Glibc.close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw SystemError("ftruncate \(file)", errno: errno) }
        return file
    }

    /// Parses `options` with the driver's descriptor and opens the node on the control executor,
    /// as the graph does.
    func open(_ descriptor: DriverDescriptor, name: String, options: [String: JSONValue],
              children: [ChildLink: any NodeState] = [:]) async throws -> any NodeState {
        var reader = OptionReader(nodeName: name, options: options)
        let configuration = try descriptor.parse(&reader)
        let context = OpenContext(controlExecutor: control, clock: MonotonicClock(), sharedObjects: SharedObjects())
        return try await Task(executorPreference: control) {
            try await configuration.open(name: name, children: children, context: context)
        }.value
    }

    /// The error parsing or opening throws, as text (nil when it succeeds).
    func openError(_ descriptor: DriverDescriptor, name: String = "n", options: [String: JSONValue],
                   children: [ChildLink: any NodeState] = [:]) async -> String? {
        do {
            let state = try await open(descriptor, name: name, options: options, children: children)
            await state.close()
            return nil
        } catch {
            return "\(error)"
        }
    }

    func instance(_ state: any NodeState, children: [ChildLink: any BlockNode] = [:]) -> any BlockNode {
        state.makeInstance(queue: QueueContext(index: 0, executor: queue, clock: MonotonicClock()), children: children.mapValues { NodeHandle($0) })
    }

    /// Runs `body` with the queue executor as task executor, so ring completions resume on its thread.
    func onQueue<T: Sendable>(_ body: @escaping @Sendable () async -> T) async -> T {
        await Task(executorPreference: queue) { await body() }.value
    }

    func submit(_ node: any BlockNode, _ request: BlockRequest) async -> IOStatus {
        await onQueue { await node.submit(request) }
    }

    func read(_ node: any BlockNode, _ buffer: TestBuffer, at offset: UInt64) async -> IOStatus {
        await submit(node, BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: buffer.count, buffer: buffer.io))
    }

    func write(_ node: any BlockNode, _ buffer: TestBuffer, at offset: UInt64, flags: RequestFlags = []) async -> IOStatus {
        await submit(node, BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: buffer.count, buffer: buffer.io, flags: flags))
    }

    func flush(_ node: any BlockNode) async -> IOStatus {
        await submit(node, BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
    }
}

/// Request memory for tests, optionally starting `misalignment` bytes past a 4096-byte boundary.
final class TestBuffer: @unchecked Sendable {
    // @unchecked Sendable: a test hands the memory to one request at a time and reads it only
    // after that request completed.
    let count: Int
    let base: UnsafeMutableRawPointer
    private let allocation: UnsafeMutableRawPointer

    init(count: Int, misalignment: Int = 0, filledWith byte: UInt8 = 0) {
        self.count = count
        allocation = .allocate(byteCount: count + misalignment + 1, alignment: 4096)
        base = allocation + misalignment
        fill(byte)
    }

    deinit { allocation.deallocate() }

    var io: IOBuffer { IOBuffer(base: base, count: count) }

    func fill(_ byte: UInt8) { base.initializeMemory(as: UInt8.self, repeating: byte, count: count) }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: base, count: count)) }

    func allEqual(_ byte: UInt8, from start: Int = 0, to end: Int? = nil) -> Bool {
        bytes[start..<(end ?? count)].allSatisfy { $0 == byte }
    }
}

/// Runs qemu-io / qemu-img and collects their exit status and combined output.
enum QemuTool {
    struct Result: Sendable {
        let status: Int32
        let output: String
    }

    static func run(_ tool: String, _ arguments: [String]) async throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        // Read while it runs, on a thread of its own: a child that prints more than a pipe holds
        // would block forever on a reader that waits for its exit, and a blocking read must not
        // hold one of the few cooperative threads that the parallel test cases share.
        let reader = pipe.fileHandleForReading
        async let output: Data = withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: reader.readDataToEndOfFile()) }
        }
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { finished in continuation.resume(returning: finished.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                try? pipe.fileHandleForWriting.close()
                continuation.resume(throwing: error)
            }
        }
        let data = await output
        return Result(status: status, output: String(decoding: data, as: UTF8.self))
    }

    /// Runs `tool` until QEMU no longer finds the image locked (up to `timeout` seconds). A process
    /// killed with I/O in flight on io_uring is reaped before the kernel has torn its ring down, and
    /// the ring's requests keep the files, and so their OFD locks, open until it has.
    static func runOnceUnlocked(_ tool: String, _ arguments: [String], timeout: Double = 20) async throws -> Result {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let result = try await run(tool, arguments)
            guard result.output.contains("Failed to get") && result.output.contains("lock"), Date() < deadline else { return result }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// Runs the strata binary and returns its output; a failure fails the test with the output.
    @discardableResult
    static func strata(_ arguments: [String]) async throws -> String {
        let result = try await run(CommandLineTests.binary, arguments)
        try #require(result.status == 0, "strata \(arguments.joined(separator: " ")): \(result.output)")
        return result.output
    }

    /// `qemu-io -f raw -c COMMAND FILE`; true when it exited 0 without a pattern mismatch.
    static func io(_ command: String, _ file: String, extra: [String] = []) async throws -> Bool {
        let result = try await run("qemu-io", extra + ["-f", "raw", "-c", command, file])
        if result.status != 0 || result.output.contains("Pattern verification failed") {
            print("qemu-io '\(command)' failed (\(result.status)): \(result.output)")
            return false
        }
        return true
    }
}

/// What a parser said when it refused its input ("accepted" when it did not): tests compare the
/// wording users see.
func refusalText(_ parse: () throws -> Void) -> String {
    do {
        try parse()
        return "accepted"
    } catch {
        return "\(error)"
    }
}
