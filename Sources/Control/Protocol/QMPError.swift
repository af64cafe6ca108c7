/// A command's failure as QMP reports it: `{"error": {"class": ..., "desc": ...}}`. The classes
/// are QEMU's (qapi/error.json); almost everything is `GenericError`, as in QEMU.
public struct QMPError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum ErrorClass: String, Sendable {
        case genericError = "GenericError"
        case commandNotFound = "CommandNotFound"
        case deviceNotActive = "DeviceNotActive"
        case deviceNotFound = "DeviceNotFound"
    }

    public let errorClass: ErrorClass
    public let desc: String

    public init(_ desc: String, class errorClass: ErrorClass = .genericError) {
        self.errorClass = errorClass
        self.desc = desc
    }

    public var description: String { "\(errorClass.rawValue): \(desc)" }

    // QEMU's wording for the monitor's own errors (monitor/qmp.c, qapi/qmp-dispatch.c).
    static let negotiationFirst = QMPError("Expecting capabilities negotiation with 'qmp_capabilities'", class: .commandNotFound)
    static let negotiationDone = QMPError("Capabilities negotiation is already complete, command ignored", class: .commandNotFound)
    static let notAnObject = QMPError("QMP input must be a JSON object")
    static func commandNotFound(_ name: String) -> QMPError { QMPError("The command \(name) has not been found", class: .commandNotFound) }
    static func parse(_ detail: String) -> QMPError { QMPError("JSON parse error, \(detail)") }
}
