import Foundation
import Testing

/// `strata img` against qemu-img 7.2, and `strata io` against qemu-io, over a corpus of images
/// with every feature qemu-img creates (scripts/img-differential): the same exit status, the
/// same output, the same images after. Differences kept on purpose are listed with why in
/// Tests/img-differential/known-differences.txt; any other fails here.
@Suite struct ImgDifferentialTests {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theMatrixHasNoUnexplainedDifference() async throws {
        let script = Self.root.appendingPathComponent("scripts/img-differential").path
        let result = try await QemuTool.run("python3", [script, "--strata", CommandLineTests.binary])
        #expect(result.status == 0, "\(result.output)")
        let summary = result.output.split(separator: "\n").last { $0.hasPrefix("img differential:") }
        let line = String(try #require(summary, "\(result.output)"))
        #expect(line.contains(", 0 unexplained)"), "\(result.output)")
        let cases = Int(line.split(separator: " ")[2]) ?? 0
        #expect(cases >= 300, "the matrix shrank: \(line)")
    }
}
