import Glibc

/// Lines for standard error, written after standard output is flushed so the two stay in order.
enum StandardError {
    static func print(_ text: String) {
        fflush(nil)
        let line = text + "\n"
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}
