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

    static func verb(_ verb: JobVerb, job: String, status: JobStatus) -> JobError {
        JobError("Job '\(job)' in state '\(status.rawValue)' cannot accept command verb '\(verb.rawValue)'")
    }

    static let notFound = JobError("Job not found")
    static func blockJobNotFound(_ id: String) -> JobError { JobError("Block job '\(id)' not found", class: .deviceNotActive) }
}
