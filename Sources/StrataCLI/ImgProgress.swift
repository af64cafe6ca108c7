import Glibc
import StrataEngine
import StrataImageTools

/// What the image tools print around their work: qemu-img's progress line and its error lines.
enum ImgProgress {
    /// "    (NN.NN/100%)\r", as qemu-img -p prints.
    static let printer: @Sendable (Double) -> Void = { fraction in
        print(IoFormat.format("    (%3.2f/100%%)\r", fraction * 100), terminator: "")
        fflush(nil)
    }

    /// The error, then any warnings, each line prefixed as the other `strata img` errors are.
    static func report(_ error: any Error) {
        StandardError.print("strata img: \(error)")
        for warning in (error as? ImageToolError)?.warnings ?? [] { StandardError.print("strata img: warning: \(warning)") }
    }
}
