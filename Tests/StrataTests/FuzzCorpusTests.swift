import Foundation
import Testing

/// Every input in Tests/fuzz-corpus (seeds, and any crash a fuzzing run found, copied there)
/// replayed through its parser by `strata-fuzz`: none may crash, trap or hang it.
@Suite struct FuzzCorpusTests {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    private static let binary = root.appendingPathComponent(".build/debug/strata-fuzz").path

    @Test(arguments: ["json", "nbd-server-handshake", "nbd-request", "nbd-server-stream", "nbd-replies", "vhost-user", "qcow2-header", "qcow2-check"])
    func corpusReplaysCleanly(target: String) async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build first (swift build --build-tests)")
        let corpus = Self.root.appendingPathComponent("Tests/fuzz-corpus/\(target)").path
        let inputs = try FileManager.default.contentsOfDirectory(atPath: corpus).count
        #expect(inputs > 0, "no seeds for \(target)")
        let result = try await QemuTool.run(Self.binary, [target, corpus])
        #expect(result.status == 0 && result.output.contains("\(target): \(inputs) inputs replayed"), "\(result.output)")
    }
}
