/// A login or a SCSI command that failed, worded for the user.
struct IscsiError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) { self.description = description }
}
