import Glibc

/// A librados or librbd call that failed, worded as QEMU words it where QEMU has a message.
struct RbdError: Error, CustomStringConvertible {
    let description: String

    init(_ what: String, result: Int32) {
        description = "\(what): \(String(cString: strerror(result < 0 ? -result : result)))"
    }

    init(_ description: String) { self.description = description }
}
