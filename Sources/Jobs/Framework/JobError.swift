import Glibc
import StrataRuntime

/// A refused job command, with QEMU's text and error class.
public struct JobError: Error, CustomStringConvertible, Equatable {
    public enum Class: String, Sendable {
        case genericError = "GenericError"
        case deviceNotActive = "DeviceNotActive"
    }

    public let description: String
    public let errorClass: Class

    public init(_ description: String, class errorClass: Class = .genericError) {
        self.description = description
        self.errorClass = errorClass
    }

    /// A failed I/O, as QEMU words a job's error: strerror's text alone ("Input/output error").
    public init(_ status: IOStatus) {
        self.init(String(cString: strerror(status.errno)))
    }

    static func verb(_ verb: JobVerb, job: String, status: JobStatus) -> JobError {
        JobError("Job '\(job)' in state '\(status.rawValue)' cannot accept command verb '\(verb.rawValue)'")
    }

    static let notFound = JobError("Job not found")
    static func blockJobNotFound(_ id: String) -> JobError { JobError("Block job '\(id)' not found", class: .deviceNotActive) }
}
