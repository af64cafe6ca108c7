/// Transmission-phase request types.
public enum NBDCommand: UInt16, Sendable, CaseIterable {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7
    case resize = 8
}
