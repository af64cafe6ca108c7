import Foundation
import Glibc
import Testing

/// A `strata serve` process for interop tests: started with its stdout in a file, ready once it
/// printed a "listening on" line per listener, stopped with SIGTERM (SIGKILL after a timeout, so a
/// test never hangs).
final class StrataServeProcess {
    let process: Process
    let outputPath: String
    let errorPath: String
    /// What each listener announced: `HOST:PORT` or `unix:PATH`, in the order given.
    private(set) var addresses: [String] = []

    private init(process: Process, outputPath: String, errorPath: String) {
        self.process = process
        self.outputPath = outputPath
        self.errorPath = errorPath
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    var pid: Int32 { process.processIdentifier }

    static func start(_ arguments: [String], listeners: Int = 1, in scratch: ScratchDirectory,
                      name: String = "serve") async throws -> StrataServeProcess {
        #expect(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary), "build the strata product first")
        let outputPath = scratch.path("\(name).out")
        let errorPath = scratch.path("\(name).err")
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errorPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        process.arguments = ["serve"] + arguments
        process.standardOutput = FileHandle(forWritingAtPath: outputPath)
        process.standardError = FileHandle(forWritingAtPath: errorPath)
        try process.run()
        let server = StrataServeProcess(process: process, outputPath: outputPath, errorPath: errorPath)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            let lines = (try? String(contentsOfFile: outputPath, encoding: .utf8))?.split(separator: "\n") ?? []
            let announced = lines.compactMap { line -> String? in
                guard let range = line.range(of: "strata serve: NBD server listening on ") else { return nil }
                return String(line[range.upperBound...])
            }
            if announced.count >= listeners {
                server.addresses = announced
                return server
            }
            if !process.isRunning { break }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw ServeFailure("strata serve \(arguments.joined(separator: " ")) did not start: \(server.standardError)")
    }

    var standardError: String { (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "" }

    /// The export's URI on listener `index`: nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME.
    func uri(_ export: String = "", listener index: Int = 0) -> String {
        let address = addresses[index]
        if address.hasPrefix("unix:") { return "nbd+unix:///\(export)?socket=\(address.dropFirst(5))" }
        return "nbd://\(address)/\(export)"
    }

    /// SIGTERM, then waits up to `seconds` for the exit; returns the exit status (SIGKILL and
    /// a recorded issue when it does not stop).
    @discardableResult
    func stop(signal: Int32 = SIGTERM, within seconds: Double = 20) async throws -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        if process.isRunning {
            Issue.record("strata serve did not stop within \(seconds) s of signal \(signal)")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGTERM; the server must exit 0 (its standard error goes into the failure).
    func expectCleanStop() async throws {
        let status = try await stop()
        #expect(status == 0 && process.terminationReason == .exit, "strata serve exited \(status) (\(process.terminationReason == .exit ? "exit" : "signal")): \(standardError)")
    }

    /// Open descriptors of the server now.
    func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Resident memory in KiB (VmRSS).
    func residentKiB() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return -1 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
    }
}

struct ServeFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
