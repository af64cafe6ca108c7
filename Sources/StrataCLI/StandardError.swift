import Glibc

/// Standard error, unbuffered and written after standard output is flushed, so the two streams
/// stay in the order things happened.
enum StandardError {
    /// Writes `text` and a newline.
    static func print(_ text: String) {
        write(text + "\n")
    }

    /// Writes `text` as it is, all of it (a short write is continued).
    static func write(_ text: String) {
        fflush(nil)
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var done = 0
            while done < buffer.count {
                let result = Glibc.write(2, buffer.baseAddress! + done, buffer.count - done)
                if result <= 0 { return }
                done += result
            }
        }
    }
}
